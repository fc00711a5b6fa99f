/**
 * Vitest's global set-up: the `vibes` executable bundled from the sources once per run, as
 * `npm run build` bundles it (scripts/bundle-cli.mjs), so the tests run the CLI, the servers and
 * the PTY hosts they spawn the way users run them, and start them in a fraction of tsx's time.
 */
import * as fs from "node:fs"
import * as path from "node:path"
import { fileURLToPath } from "node:url"
import type { TestProject } from "vitest/node"
import { bundleCli } from "../../scripts/bundle-cli.mjs"

declare module "vitest" {
  export interface ProvidedContext {
    /** The bundled CLI's entry: `node <it> <args>` runs `vibes <args>`. */
    readonly vibesCli: string
  }
}

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..")
// Inside the package, so the bundle finds its package.json (version, web UI) as the built one does.
const outdir = path.join(root, "node_modules", ".cache", "vibes-test-cli", String(process.pid))

// Each project of the run calls the set-up: one bundle for all of them, removed after the last.
let bundled: Promise<string> | undefined
let users = 0

export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  bundled ??= bundleCli(outdir, { sourcemap: false })
  users += 1
  project.provide("vibesCli", await bundled)
  return async () => {
    users -= 1
    if (users === 0) fs.rmSync(outdir, { recursive: true, force: true })
  }
}
