// Builds dist/croupier.esm.js (ESM) and dist/croupier.min.js (a script-tag bundle that
// sets window.Croupier), then checks the script-tag bundle's gzipped size (at most 6 KB).
// Skips the work when dist is newer than every source file.
import { build } from "esbuild";
import { execFileSync } from "node:child_process";
import { existsSync, readFileSync, readdirSync, statSync } from "node:fs";
import { gzipSync } from "node:zlib";

const LIMIT = 6 * 1024;
const outs = ["dist/croupier.esm.js", "dist/croupier.min.js", "dist/types/index.d.ts"];
const inputs = ["build.mjs", "tsconfig.json", "package.json", ...readdirSync("src").map((f) => `src/${f}`)];
const newest = Math.max(...inputs.map((f) => statSync(f).mtimeMs));
const fresh = outs.every((f) => existsSync(f) && statSync(f).mtimeMs >= newest);

if (!fresh || process.argv.includes("--force")) {
  const common = { entryPoints: ["src/index.ts"], bundle: true, minify: true, target: "es2019", legalComments: "none" };
  await build({ ...common, format: "esm", outfile: "dist/croupier.esm.js" });
  await build({ ...common, format: "iife", globalName: "Croupier", outfile: "dist/croupier.min.js" });
  execFileSync(process.execPath, ["node_modules/typescript/bin/tsc", "-p", "tsconfig.json"], { stdio: "inherit" });
}
for (const f of ["dist/croupier.esm.js", "dist/croupier.min.js"]) {
  const size = gzipSync(readFileSync(f), { level: 9 }).length;
  console.log(`${f}: ${size} bytes gzipped (limit ${LIMIT})`);
  if (size > LIMIT) {
    console.error(`${f} is over ${LIMIT} bytes gzipped`);
    process.exit(1);
  }
}
