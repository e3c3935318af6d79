// The summary both seed studies print (bench/awq-tokens.sh, bench/seed-spread.sh): every run, then per
// setting the mean ± sd over seeds of perplexity and KL from the source, and in how many seeds the setting
// beats the reference setting of the same seed (strictly lower perplexity / KL).
//
//   node --import tsx bench/seed-summary.ts <rows.tsv> --setting <column name> --ref <setting value> [--extra <column name>]
//
// rows.tsv: one run per line, tab-separated: seed, setting, ppl, KL[, extra].

import fs from "node:fs";

const args = process.argv.slice(2);
const opt = (name: string): string | undefined => {
  const i = args.indexOf(name);
  return i < 0 ? undefined : args[i + 1];
};
const file = args[0]!;
const setting = opt("--setting") ?? "setting";
const extra = opt("--extra");
const rows = fs.readFileSync(file, "utf8").trim().split("\n").map((l) => l.split("\t"));
const ref = opt("--ref") ?? rows[0]![1]!;

const cols = ["seed", setting, "ppl", "KL from source", ...(extra ? [extra] : [])];
console.log(`| ${cols.join(" | ")} |\n|${cols.map(() => "---").join("|")}|`);
for (const r of rows) console.log(`| ${r.slice(0, cols.length).join(" | ")} |`);

const stat = (v: number[]): [number, number] => {
  const m = v.reduce((a, b) => a + b, 0) / v.length;
  return [m, Math.sqrt(v.reduce((a, b) => a + (b - m) ** 2, 0) / Math.max(1, v.length - 1))];
};
console.log(`\n| ${setting} | seeds | ppl mean ± sd | KL mean ± sd | seeds with lower ppl than ${ref} | seeds with lower KL than ${ref} |\n|---|---|---|---|---|---|`);
for (const s of [...new Set(rows.map((r) => r[1]!))]) {
  const rs = rows.filter((r) => r[1] === s);
  const [pm, ps] = stat(rs.map((r) => +r[2]!));
  const [km, ks] = stat(rs.map((r) => +r[3]!));
  const wins = (i: number): string => {
    if (s === ref) return "–";
    const paired = rs.filter((r) => rows.some((x) => x[0] === r[0] && x[1] === ref));
    return `${paired.filter((r) => +r[i]! < +rows.find((x) => x[0] === r[0] && x[1] === ref)![i]!).length}/${paired.length}`;
  };
  console.log(`| ${s} | ${rs.length} | ${pm.toFixed(4)} ± ${ps.toFixed(4)} | ${km.toExponential(3)} ± ${ks.toExponential(2)} | ${wins(2)} | ${wins(3)} |`);
}
