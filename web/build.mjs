// Copies NiiVue's prebuilt UMD bundle (exposes the global `niivue`) into the server's static folder.
// Run after `npm ci` in this folder (scripts/setup_web.sh does both).
import { copyFileSync, existsSync, mkdirSync, readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const src = join(here, "node_modules", "@niivue", "niivue", "dist", "niivue.umd.js");
const dest = join(here, "..", "src", "seganypet", "server", "static", "dist", "niivue.js");
if (!existsSync(src)) {
  console.error(`missing ${src}: run 'npm ci' in ${here} first`);
  process.exit(1);
}
const version = JSON.parse(readFileSync(join(here, "node_modules", "@niivue", "niivue", "package.json"))).version;
mkdirSync(dirname(dest), { recursive: true });
copyFileSync(src, dest);
console.log(`NiiVue ${version} -> ${dest}`);
