/** What the tests on the synthetic organisms share beyond `makeOrganisms`. */
import { join } from 'node:path';
import { type DirectionMeta, saveDirections } from '../../src/directions/direction.js';
import { constantDirectionSet } from '../../src/interventions/compose.js';
import { SafetensorsFile } from '../../src/io/safetensors.js';
import type { OrganismManifest } from '../../src/organisms/make.js';

/**
 * Saves the organisms' planted general direction to `out` as a direction file: the planted unit vector at
 * every layer (0..3), scaled like a mean difference (norm 6).
 */
export async function savePlantedGeneral(
  org: string,
  manifest: OrganismManifest,
  out: string,
  meta?: Partial<DirectionMeta>,
): Promise<void> {
  const f = await SafetensorsFile.open(join(org, manifest.plantedFile));
  const u = await f.readFloat32('general');
  await f.close();
  await saveDirections(
    out,
    constantDirectionSet(
      u.map((x) => 6 * x),
      [0, 1, 2, 3],
      meta,
    ),
  );
}
