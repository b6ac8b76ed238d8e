// `npm run build`: src/ and gen/ bundled by esbuild into dist/src/, what the
// image and `make bench` run. One bundle instead of ~400 separate modules
// (fastify, connect, protobuf-es, kysely…) costs each process ~10 MB less
// memory at start; `make bench` prints the figures. The entry is
// dist/src/cli.js; each command's code is a chunk it imports on demand, so a
// service loads only its own. Type checking stays with tsc (`npm run build`
// runs it first).
import { cpSync } from "node:fs";
import { build } from "esbuild";

await build({
  entryPoints: ["src/cli.ts"],
  outdir: "dist/src",
  bundle: true,
  splitting: true,
  platform: "node",
  format: "esm",
  target: "node20",
  // Loaded from node_modules at run time: a native addon, and Fastify's
  // JSON Schema compilers, which only a route with a schema needs (see
  // src/lib/http-app.ts).
  external: ["better-sqlite3", "@fastify/ajv-compiler", "@fastify/fast-json-stringify-compiler"],
  minifySyntax: true,
  minifyWhitespace: true,
  // The image runs with --enable-source-maps: stack traces name src/ lines.
  sourcemap: "linked",
  sourcesContent: false,
  logLevel: "warning",
  // CommonJS dependencies bundled into ESM still call require() and read
  // __dirname/__filename (ioredis does in its error path): give every chunk
  // its own, as Node gives a CommonJS module.
  banner: {
    js: [
      'import { createRequire as __cmRequire } from "node:module";',
      'import { fileURLToPath as __cmPath } from "node:url";',
      'import { dirname as __cmDir } from "node:path";',
      "const require = __cmRequire(import.meta.url);",
      "const __filename = __cmPath(import.meta.url);",
      "const __dirname = __cmDir(__filename);",
    ].join("\n"),
  },
});

// The chat page is read from `page/` beside the module that serves it, which
// in the bundle is a chunk in dist/src/ (chunks are not put in subfolders).
cpSync("src/gateway/page", "dist/src/page", { recursive: true });
