/** The object with its keys in code-unit order, as Python's `json.dump(..., sort_keys=True)` writes them. */
export function sortKeys<T extends Record<string, unknown>>(o: T): T {
  return Object.fromEntries(Object.entries(o).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))) as T;
}
