/**
 * `emlens/io`: file formats and safe writes: safetensors (read, write, encode), half floats (f16, bf16),
 * PyTorch torch.save files (read without running pickled code, and written), weight folders (one or many
 * safetensors files), atomic writes, and output claims that refuse to clobber.
 */
export { pathExists, writeAtomic, writeStreamAtomic } from './files.js';
export {
  encodeGguf,
  GGML_TYPE_F32,
  type GgufFile,
  type GgufKv,
  type GgufTensorInfo,
  GgufType,
  type GgufValue,
  parseGguf,
} from './gguf.js';
export { bf16ToF32, f16ToF32, f32ToBf16, f32ToF16 } from './halfFloat.js';
export { inputExists, openInputFile, readInputText, readUserFile } from './inputFiles.js';
export {
  type ClaimOptions,
  claimOutputFile,
  claimOutputFiles,
  claimOutputFolder,
  claimResumableFolder,
  writeFolderAtomic,
} from './outputs.js';
export { PickleTuple, type PickleValue } from './pickle.js';
export {
  bytesToFloat32,
  DTYPE_BYTES,
  decodeSafetensors,
  encodeSafetensors,
  readSafetensorsHeader,
  type SafetensorsDtype,
  SafetensorsFile,
  type SafetensorsHeader,
  type SafetensorsTypedArray,
  type TensorInfo,
  type TensorsToWrite,
  type TensorToWrite,
  writeSafetensors,
} from './safetensors.js';
export {
  decodeTorchPt,
  encodeTorchPt,
  readTorchPt,
  type TorchData,
  type TorchDtype,
  TorchTensor,
  type TorchValue,
  type TorchWritable,
  torchTensor,
  writeTorchPt,
} from './torchPt.js';
export { type WeightInfo, WeightSource } from './weightSource.js';
