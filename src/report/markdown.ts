/** The report as markdown (report.md): the same sections as the HTML page, plots linked as files. */
import {
  KIND_ORDER,
  KIND_TITLES,
  type ReportPage,
  type ReportPlot,
  type ReportSection,
  type ReportTable,
} from './model.js';

const cellText = (s: string) => s.replace(/\|/g, '\\|').replace(/\n/g, ' ');

/** A pipe table; random-control rows are marked `(control)` when their label does not say so already. */
export function tableMarkdown(t: ReportTable): string {
  const align = (k: number) => t.align?.[k] ?? (k === 0 ? 'left' : 'right');
  const controls = new Set(t.controlRows ?? []);
  const lines = [
    ...(t.caption ? [`${t.caption}:`, ''] : []),
    `| ${t.header.map(cellText).join(' | ')} |`,
    `| ${t.header.map((_, k) => (align(k) === 'right' ? '---:' : '---')).join(' | ')} |`,
    ...t.rows.map((r, i) => {
      const cells = r.map(cellText);
      const [label] = cells;
      if (label !== undefined && controls.has(i) && !/control|random/i.test(label))
        cells[0] = `${label} (control)`;
      return `| ${cells.join(' | ')} |`;
    }),
  ];
  return `${lines.join('\n')}\n`;
}

function sectionMarkdown(s: ReportSection, level: number, plotPath: (p: ReportPlot) => string): string {
  const out: string[] = [`${'#'.repeat(Math.min(6, level))} ${s.title}`, ''];
  if (s.sources.length > 0) out.push(`From ${s.sources.map((x) => `\`${x}\``).join(', ')}.`, '');
  if (s.facts.length > 0) {
    for (const [k, v] of s.facts) out.push(`- ${k}: ${v}`);
    out.push('');
  }
  for (const p of s.paragraphs) out.push(p, '');
  for (const n of s.notes) out.push(`_${n}_`, '');
  for (const p of s.plots) out.push(`![${p.title}](${plotPath(p)})`, '');
  for (const t of s.tables) out.push(tableMarkdown(t));
  for (const t of s.texts) {
    out.push(`${t.title}:`, '');
    if (t.format === 'markdown') out.push(t.body.trim(), '');
    else out.push('```text', t.body.replace(/\n+$/, ''), '```', '');
  }
  for (const c of s.children) out.push(sectionMarkdown(c, level + 1, plotPath));
  return out.join('\n');
}

/** The whole report as markdown; `plotPath` says where each plot's file is, relative to report.md. */
export function renderMarkdown(page: ReportPage, plotPath: (p: ReportPlot) => string): string {
  const out: string[] = [
    `# ${page.title}`,
    '',
    `Generated ${page.generated} by emlens ${page.emlensVersion} on Node ${page.nodeVersion} (${page.platform}).`,
    '',
    '## Inputs',
    '',
    ...page.inputs.map(
      (i) =>
        `- \`${i.path}\`: ${i.kind ? KIND_TITLES[i.kind].toLowerCase() : ''}${i.note ? ` ${i.note}` : ''}`,
    ),
    ...page.unrecognised.map((u) => `- \`${u.path}\`: **not recognised** (${u.reason})`),
    '',
    '## At a glance',
    '',
  ];
  for (const s of page.sections) {
    if (s.highlights.length === 0) continue;
    out.push(`- ${s.title}`);
    for (const h of s.highlights.slice(0, 12)) out.push(`  - ${h}`);
  }
  out.push('');
  for (const kind of KIND_ORDER) {
    const sections = page.sections.filter((s) => s.kind === kind);
    if (sections.length === 0) continue;
    out.push(`## ${KIND_TITLES[kind]}`, '');
    for (const s of sections) out.push(sectionMarkdown(s, 3, plotPath));
  }
  return `${out
    .join('\n')
    .replace(/\n{3,}/g, '\n\n')
    .trimEnd()}\n`;
}
