// Versions of what a run measured, for its report.

import { readFileSync } from "node:fs";

/** The installed version of an npm package of this harness. */
export function packageVersion(name) {
  const file = new URL(`../node_modules/${name}/package.json`, import.meta.url);
  return JSON.parse(readFileSync(file, "utf8")).version;
}
