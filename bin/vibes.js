#!/usr/bin/env node
// The bundled CLI (dist/cli); `npm install` (prepare) and `npm start` build it.
import * as module from "node:module"

if (process.argv.length === 3 && process.argv[2] === "--version") {
  // `vibes --version` answers without loading the CLI: only the module that reads the version.
  const { version } = await import("../dist/src/Version.js")
  process.stdout.write(`${version}\n`)
} else {
  // Node 22 keeps the compiled bundle between runs (Node 20 has no such cache: a no-op there).
  if ("enableCompileCache" in module && typeof module.enableCompileCache === "function")
    module.enableCompileCache()
  await import("../dist/cli/vibes.js")
}
