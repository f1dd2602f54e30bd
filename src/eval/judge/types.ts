/** A judge scores one filled judge prompt: a number in [0, 100], or null when it gave no number. */
export interface Judge {
  /** Identifies the judge (model name, or `local:DIR`); part of cache keys and reports. */
  readonly name: string;
  score(prompt: string): Promise<number | null>;
  /** Releases what the judge holds (a loaded model); optional. */
  close?(): Promise<void>;
}
