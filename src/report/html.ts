/**
 * The report as one self-contained HTML page: CSS inline, every plot embedded as a data: URI (an SVG or PNG
 * image, so the plots' own ids cannot collide), nothing fetched from the network. A small inline script counts,
 * on load, the plots that rendered with a non-zero size and drawn pixels, and writes the count into
 * `data-plots-rendered` on <body> (`data-plots-expected` holds how many there are): a headless browser's
 * `--dump-dom` shows whether every plot appeared.
 */
import {
  KIND_ORDER,
  KIND_TITLES,
  type ReportPage,
  type ReportPlot,
  type ReportSection,
  type ReportTable,
  type ReportText,
} from './model.js';

/** Escapes text for HTML content and attribute values. */
export function esc(s: string): string {
  return s
    .replace(/&/g, '&amp;')
    .replace(/</g, '&lt;')
    .replace(/>/g, '&gt;')
    .replace(/"/g, '&quot;')
    .replace(/'/g, '&#39;');
}

function inlineMarkdown(s: string): string {
  // Code spans first (their content is literal), then bold, then links (shown, never fetched).
  return s
    .split(/(`[^`]+`)/)
    .map((part) => {
      if (/^`[^`]+`$/.test(part)) return `<code>${esc(part.slice(1, -1))}</code>`;
      return esc(part)
        .replace(/\*\*([^*]+)\*\*/g, '<strong>$1</strong>')
        .replace(/\[([^\]]+)\]\(([^)\s]+)\)/g, (_m, text: string, href: string) =>
          /^(https?:|#)/.test(href.replace(/&amp;/g, '&'))
            ? `<a href="${href}">${text}</a>`
            : `${text} (${href})`,
        );
    })
    .join('');
}

const splitRow = (line: string) =>
  line
    .trim()
    .replace(/^\|/, '')
    .replace(/\|$/, '')
    .split(/(?<!\\)\|/)
    .map((c) => c.trim().replace(/\\\|/g, '|'));

/**
 * A small markdown renderer for result notes: headings, paragraphs, lists, fenced code and pipe tables.
 * Raw HTML in the source is shown as text.
 */
export function markdownToHtml(md: string): string {
  const lines = md.replace(/\r\n/g, '\n').split('\n');
  // Every read checks its index against lines.length first; the fallback is never taken.
  const at = (k: number): string => lines[k] ?? '';
  const out: string[] = [];
  let i = 0;
  while (i < lines.length) {
    const line = at(i);
    if (line.trim() === '') {
      i++;
      continue;
    }
    if (/^```/.test(line)) {
      const body: string[] = [];
      for (i++; i < lines.length && !/^```/.test(at(i)); i++) body.push(at(i));
      i++;
      out.push(`<pre>${esc(body.join('\n'))}</pre>`);
      continue;
    }
    const h = /^(#{1,6})\s+(.*)$/.exec(line);
    if (h) {
      const [, hashes = '', text = ''] = h; // both groups are not optional: always set on a match
      const level = Math.min(6, hashes.length + 3);
      out.push(`<h${level}>${inlineMarkdown(text)}</h${level}>`);
      i++;
      continue;
    }
    if (/^\s*\|/.test(line) && i + 1 < lines.length && /^\s*\|?\s*:?-{3,}/.test(at(i + 1))) {
      const header = splitRow(line);
      const aligns = splitRow(at(i + 1)).map((c) => (c.endsWith(':') ? 'right' : 'left'));
      const rows: string[][] = [];
      for (i += 2; i < lines.length && /^\s*\|/.test(at(i)); i++) {
        if (/^\s*\|?\s*:?-{3,}/.test(at(i))) continue;
        rows.push(splitRow(at(i)));
      }
      out.push(
        `<div class="table-wrap"><table><thead><tr>${header.map((c, k) => `<th class="${aligns[k] ?? 'left'}">${inlineMarkdown(c)}</th>`).join('')}</tr></thead><tbody>${rows
          .map(
            (r) =>
              `<tr>${r.map((c, k) => `<td class="${aligns[k] ?? 'left'}">${inlineMarkdown(c)}</td>`).join('')}</tr>`,
          )
          .join('')}</tbody></table></div>`,
      );
      continue;
    }
    if (/^\s*([-*]|\d+\.)\s+/.test(line)) {
      const ordered = /^\s*\d+\./.test(line);
      const items: string[] = [];
      for (; i < lines.length && /^\s*([-*]|\d+\.)\s+/.test(at(i)); i++) {
        items.push(`<li>${inlineMarkdown(at(i).replace(/^\s*([-*]|\d+\.)\s+/, ''))}</li>`);
      }
      out.push(ordered ? `<ol>${items.join('')}</ol>` : `<ul>${items.join('')}</ul>`);
      continue;
    }
    const para: string[] = [];
    for (; i < lines.length && at(i).trim() !== '' && !/^(```|#{1,6}\s|\s*\|)/.test(at(i)); i++) {
      para.push(at(i));
    }
    if (para.length === 0) {
      out.push(`<p>${inlineMarkdown(line)}</p>`);
      i++;
    } else out.push(`<p>${inlineMarkdown(para.join(' '))}</p>`);
  }
  return out.join('\n');
}

function tableHtml(t: ReportTable): string {
  const align = (k: number) => t.align?.[k] ?? (k === 0 ? 'left' : 'right');
  const controls = new Set(t.controlRows ?? []);
  if (t.collapsed) {
    return `<details><summary>${esc(t.caption ?? 'Table')}</summary>${tableHtml({ ...t, collapsed: false })}</details>`;
  }
  return [
    '<div class="table-wrap"><table>',
    t.caption ? `<caption>${esc(t.caption)}</caption>` : '',
    `<thead><tr>${t.header.map((h, k) => `<th class="${align(k)}">${esc(h)}</th>`).join('')}</tr></thead>`,
    '<tbody>',
    ...t.rows.map(
      (r, i) =>
        `<tr${controls.has(i) ? ' class="control"' : ''}>${r.map((c, k) => `<td class="${align(k)}">${esc(c)}</td>`).join('')}</tr>`,
    ),
    '</tbody></table></div>',
  ].join('');
}

function plotHtml(p: ReportPlot): string {
  const src = `data:${p.mime};base64,${p.data.toString('base64')}`;
  return `<figure><img class="plot" src="${src}" alt="${esc(p.title)}" title="${esc(p.title)}"><figcaption>${esc(p.title)}${p.file ? ` <span class="file">(${esc(p.file)})</span>` : ''}</figcaption></figure>`;
}

function textHtml(t: ReportText): string {
  const body =
    t.format === 'markdown' ? `<div class="md">${markdownToHtml(t.body)}</div>` : `<pre>${esc(t.body)}</pre>`;
  return `<details${t.open ? ' open' : ''}><summary>${esc(t.title)}</summary>${body}</details>`;
}

function sectionHtml(s: ReportSection, level: number): string {
  const h = `h${Math.min(6, level)}`;
  const parts = [
    `<section class="report-section kind-${s.kind}" id="${esc(s.id)}">`,
    `<${h}>${esc(s.title)}</${h}>`,
    s.sources.length > 0
      ? `<p class="sources">from ${s.sources.map((x) => `<code>${esc(x)}</code>`).join(', ')}</p>`
      : '',
  ];
  if (s.facts.length > 0) {
    parts.push(
      `<dl class="facts">${s.facts.map(([k, v]) => `<dt>${esc(k)}</dt><dd>${esc(v)}</dd>`).join('')}</dl>`,
    );
  }
  for (const p of s.paragraphs) parts.push(`<p>${esc(p)}</p>`);
  for (const n of s.notes) parts.push(`<p class="note">${esc(n)}</p>`);
  // Written results (markdown) first, then the plots, the tables, and long plain text last.
  for (const t of s.texts.filter((x) => x.format === 'markdown')) parts.push(textHtml(t));
  if (s.plots.length > 0) parts.push(`<div class="plots">${s.plots.map(plotHtml).join('')}</div>`);
  for (const t of s.tables) parts.push(tableHtml(t));
  for (const t of s.texts.filter((x) => x.format !== 'markdown')) parts.push(textHtml(t));
  for (const c of s.children) parts.push(sectionHtml(c, level + 1));
  parts.push('</section>');
  return parts.join('\n');
}

function tocHtml(sections: readonly ReportSection[]): string {
  if (sections.length === 0) return '';
  return `<ol>${sections
    .map((s) => `<li><a href="#${esc(s.id)}">${esc(s.title)}</a>${tocHtml(s.children)}</li>`)
    .join('')}</ol>`;
}

/** Counts the plots of a section tree. */
export function countPlots(sections: readonly ReportSection[]): number {
  return sections.reduce((n, s) => n + s.plots.length + countPlots(s.children), 0);
}

const CSS = `
:root { --fg: #1f2328; --muted: #6b7280; --line: #e5e7eb; --accent: #8b1e3f; --bg-soft: #f6f7f9; }
* { box-sizing: border-box; }
body { margin: 0; color: var(--fg); background: #fff; font: 15px/1.5 system-ui, -apple-system, "Segoe UI", "DejaVu Sans", Helvetica, Arial, sans-serif; }
header.page { background: var(--accent); color: #fff; padding: 20px 32px 16px; }
header.page h1 { margin: 0 0 4px; font-size: 26px; }
header.page p { margin: 0; opacity: .9; font-size: 14px; }
.wrap { max-width: 1200px; margin: 0 auto; padding: 8px 32px 48px; }
h2 { border-bottom: 2px solid var(--accent); padding-bottom: 4px; margin-top: 36px; font-size: 22px; }
h3 { font-size: 19px; margin: 28px 0 6px; }
h4 { font-size: 16px; margin: 22px 0 6px; }
.report-section .report-section { border-left: 3px solid var(--line); padding-left: 14px; }
.summary { display: grid; grid-template-columns: minmax(280px, 1fr) minmax(280px, 1fr); gap: 24px; }
.summary ul { margin: 4px 0; padding-left: 20px; }
.summary li { margin: 2px 0; }
.card { background: var(--bg-soft); border: 1px solid var(--line); border-radius: 6px; padding: 10px 16px; }
.card h2 { margin-top: 4px; border: 0; font-size: 18px; }
.bad { color: #b42318; }
.ok { color: #067647; }
.sources, .file, .note { color: var(--muted); font-size: 13px; }
.note { font-style: italic; }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: 2px 14px; margin: 8px 0 12px; font-size: 14px; }
dl.facts dt { color: var(--muted); }
dl.facts dd { margin: 0; overflow-wrap: anywhere; }
.plots { display: flex; flex-wrap: wrap; gap: 16px; margin: 12px 0; align-items: flex-start; }
figure { margin: 0; border: 1px solid var(--line); border-radius: 6px; padding: 8px; background: #fff; max-width: 100%; }
img.plot { display: block; max-width: 100%; height: auto; }
figcaption { font-size: 13px; color: var(--muted); margin-top: 4px; }
.table-wrap { overflow-x: auto; margin: 12px 0; }
table { border-collapse: collapse; font-size: 13px; font-variant-numeric: tabular-nums; }
caption { text-align: left; font-weight: 600; padding: 4px 0; color: var(--fg); }
th, td { border: 1px solid var(--line); padding: 3px 8px; vertical-align: top; }
th { background: var(--bg-soft); font-weight: 600; }
td.right, th.right { text-align: right; white-space: nowrap; }
td.left, th.left { text-align: left; }
tbody tr:nth-child(even) { background: #fbfbfc; }
tr.control td { color: var(--muted); font-style: italic; }
.md td:first-child { white-space: nowrap; }
details { margin: 10px 0; }
summary { cursor: pointer; font-weight: 600; }
pre { background: var(--bg-soft); border: 1px solid var(--line); padding: 10px; overflow-x: auto; font-size: 12px; line-height: 1.35; }
nav.toc ol { margin: 4px 0; padding-left: 22px; }
code { font-size: 12.5px; }
`;

const SCRIPT = `
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.querySelectorAll('img.plot'));
  var rendered = 0;
  imgs.forEach(function (img) {
    var r = img.getBoundingClientRect();
    var ink = 0;
    if (img.complete && img.naturalWidth > 0 && r.width > 0 && r.height > 0) {
      try {
        var c = document.createElement('canvas');
        c.width = img.naturalWidth; c.height = img.naturalHeight;
        var g = c.getContext('2d');
        g.fillStyle = '#fff'; g.fillRect(0, 0, c.width, c.height);
        g.drawImage(img, 0, 0);
        var d = g.getImageData(0, 0, c.width, c.height).data;
        for (var k = 0; k < d.length; k += 4) if (d[k] < 240 || d[k + 1] < 240 || d[k + 2] < 240) ink++;
      } catch (e) { ink = -1; }
    }
    img.setAttribute('data-ink', String(ink));
    if (ink !== 0 && img.naturalWidth > 0 && r.width > 0 && r.height > 0) rendered++;
  });
  document.body.setAttribute('data-plots-rendered', String(rendered));
});
`;

/** The whole page. */
export function renderHtml(page: ReportPage): string {
  const groups = KIND_ORDER.map((k) => ({
    kind: k,
    sections: page.sections.filter((s) => s.kind === k),
  })).filter((g) => g.sections.length > 0);
  const recognised = page.inputs
    .map(
      (i) =>
        `<li><code>${esc(i.path)}</code>: ${i.kind ? `<span class="ok">${esc(KIND_TITLES[i.kind].toLowerCase())}</span>` : ''}${i.note ? ` ${esc(i.note)}` : ''}</li>`,
    )
    .concat(
      page.unrecognised.map(
        (u) =>
          `<li><code>${esc(u.path)}</code>: <span class="bad">not recognised</span> (${esc(u.reason)})</li>`,
      ),
    );
  const highlights = page.sections
    .filter((s) => s.highlights.length > 0)
    .map(
      (s) =>
        `<li><a href="#${esc(s.id)}">${esc(s.title)}</a><ul>${s.highlights
          .slice(0, 12)
          .map((h) => `<li>${esc(h)}</li>`)
          .join('')}</ul></li>`,
    );
  const toc = `<ol>${groups
    .map((g) => `<li><a href="#group-${g.kind}">${esc(KIND_TITLES[g.kind])}</a>${tocHtml(g.sections)}</li>`)
    .join('')}</ol>`;
  const body = groups
    .map(
      (g) =>
        `<section class="group" id="group-${g.kind}"><h2>${esc(KIND_TITLES[g.kind])}</h2>\n${g.sections.map((s) => sectionHtml(s, 3)).join('\n')}</section>`,
    )
    .join('\n');
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="emlens ${esc(page.emlensVersion)}">
<title>${esc(page.title)}</title>
<style>${CSS}</style>
</head>
<body data-plots-expected="${countPlots(page.sections)}" data-plots-rendered="0">
<header class="page"><h1>${esc(page.title)}</h1>
<p>Generated ${esc(page.generated)} by emlens ${esc(page.emlensVersion)} on Node ${esc(page.nodeVersion)} (${esc(page.platform)}); ${page.inputs.length} input${page.inputs.length === 1 ? '' : 's'} recognised${page.unrecognised.length > 0 ? `, <strong>${page.unrecognised.length} not recognised</strong>` : ''}.</p></header>
<div class="wrap">
<div class="summary">
<div class="card" id="summary"><h2>At a glance</h2><ul>${highlights.join('') || '<li>No results to summarise.</li>'}</ul></div>
<div>
<div class="card"><h2>Inputs</h2><ul>${recognised.join('')}</ul></div>
<nav class="card toc" id="contents"><h2>Contents</h2>${toc}</nav>
</div>
</div>
${body}
</div>
<script>${SCRIPT}</script>
</body>
</html>
`;
}
