/**
 * The `vibes` executable the tests spawn: under vitest, the run's bundle of the sources (made by
 * CliBundle.ts); elsewhere (the benchmarks, which import the test support) the built one. vitest
 * is imported lazily: importing it outside a vitest worker throws.
 */
import * as path from "node:path"
import { fileURLToPath } from "node:url"

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..")

const find = async (): Promise<string> => {
  try {
    const { inject } = await import("vitest")
    return inject("vibesCli")
  } catch {
    return path.join(root, "bin", "vibes.js")
  }
}

/** `node <entry> <args>` runs `vibes <args>`. */
export const entry: string = await find()
