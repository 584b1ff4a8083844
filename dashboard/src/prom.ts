// The Prometheus text format as /metrics writes it, read in the browser: samples with
// labels, sums, and a quantile from a histogram's cumulative buckets (what PromQL's
// histogram_quantile does, over the counts since start or between two scrapes).

export interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

const LINE = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)/;
const LABEL = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g;

export function parse(text: string): Sample[] {
  const out: Sample[] = [];
  for (const line of text.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const m = LINE.exec(line);
    if (!m) continue;
    const labels: Record<string, string> = {};
    for (const l of (m[3] ?? '').matchAll(LABEL)) labels[l[1]] = l[2].replace(/\\(.)/g, (_, c: string) => (c === 'n' ? '\n' : c));
    const value = m[4] === '+Inf' ? Infinity : m[4] === '-Inf' ? -Infinity : Number(m[4]);
    out.push({ name: m[1], labels, value });
  }
  return out;
}

/** The sum of a family's samples that match `where`. */
export function sum(samples: Sample[], name: string, where: Record<string, string> = {}): number {
  return samples.filter((s) => s.name === name && Object.entries(where).every(([k, v]) => s.labels[k] === v)).reduce((a, s) => a + s.value, 0);
}

/** Sums of a family by one label. */
export function by(samples: Sample[], name: string, label: string): Map<string, number> {
  const m = new Map<string, number>();
  for (const s of samples) if (s.name === name) m.set(s.labels[label] ?? '', (m.get(s.labels[label] ?? '') ?? 0) + s.value);
  return m;
}

/** Cumulative bucket counts of a histogram (summed over its other labels), by upper bound. */
export function buckets(samples: Sample[], name: string, where: Record<string, string> = {}): Map<number, number> {
  const m = new Map<number, number>();
  for (const s of samples) {
    if (s.name !== name + '_bucket') continue;
    if (!Object.entries(where).every(([k, v]) => s.labels[k] === v)) continue;
    const le = s.labels.le === '+Inf' ? Infinity : Number(s.labels.le);
    m.set(le, (m.get(le) ?? 0) + s.value);
  }
  return m;
}

/** The q-quantile of cumulative buckets (linear within a bucket); null when empty. */
export function quantile(q: number, b: Map<number, number>, earlier?: Map<number, number>): number | null {
  const les = [...b.keys()].sort((x, y) => x - y);
  const count = (le: number) => (b.get(le) ?? 0) - (earlier?.get(le) ?? 0);
  const total = les.length ? count(les[les.length - 1]) : 0;
  if (total <= 0) return null;
  const rank = q * total;
  let prevLe = 0;
  let prevCount = 0;
  for (const le of les) {
    const c = count(le);
    if (c >= rank) {
      if (le === Infinity) return prevLe;
      return prevLe + ((le - prevLe) * (rank - prevCount)) / Math.max(1e-12, c - prevCount);
    }
    prevLe = le;
    prevCount = c;
  }
  return prevLe;
}
