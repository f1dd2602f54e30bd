/** Number formatting shared by every table, report and CLI line, so one value always reads the same way. */

/**
 * A share as a percentage string, `n/a` for anything that is not a finite number (null, undefined, NaN):
 * a missing estimate must read as missing, never as `NaN%`.
 *
 * @example
 * pct(0.1234) // '12.3%'
 * pct(null)   // 'n/a'
 */
export function pct(x: unknown, digits = 1): string {
  return typeof x === 'number' && Number.isFinite(x) ? `${(100 * x).toFixed(digits)}%` : 'n/a';
}
