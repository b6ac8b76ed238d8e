#!/usr/bin/env node
// The `chatmesh` command. Two ways to run, chosen here and nowhere else:
// - production: the JavaScript compiled by `npm run build` (dist/), plain
//   Node, no loader, no dev dependencies (this is what the image runs);
// - development: a clone without dist/ runs the TypeScript sources through
//   tsx's loader, so `make run-all` needs no build step.
// CHATMESH_FROM_SOURCE=1 forces the sources even when dist/ exists. This
// launcher reads that one variable itself because it decides which code loads.
import { existsSync, readdirSync, statSync } from "node:fs";

const compiled = new URL("../dist/src/cli.js", import.meta.url);
const sources = new URL("../src/", import.meta.url);

/** Newest modification time of the files under `dir`, in ms. */
function newest(dir) {
  let latest = 0;
  for (const name of readdirSync(dir, { recursive: true })) {
    latest = Math.max(latest, statSync(new URL(name, dir)).mtimeMs);
  }
  return latest;
}

if (process.env.CHATMESH_FROM_SOURCE !== "1" && existsSync(compiled)) {
  // A checkout that was built once and edited since would silently run old code.
  if (existsSync(sources) && newest(sources) > statSync(compiled).mtimeMs) {
    console.error(
      "chatmesh: dist/ is older than src/; running dist/ anyway (run `npm run build`, or set CHATMESH_FROM_SOURCE=1)",
    );
  }
  await import(compiled.href);
} else {
  let register;
  try {
    ({ register } = await import("tsx/esm/api"));
  } catch {
    console.error(
      "chatmesh: dist/ is missing and tsx (a dev dependency) is not installed: run `npm run build`, or `npm install`",
    );
    process.exit(1);
  }
  register();
  await import("../src/cli.ts");
}
