/**
 * Temporary directories removed when the scope closes.
 */
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { Effect } from "effect"

/** A fresh directory under the OS temp dir, removed with everything in it afterwards. */
export const tempDir = (prefix: string) =>
  Effect.acquireRelease(
    Effect.sync(() => fs.mkdtempSync(path.join(os.tmpdir(), prefix))),
    (dir) => Effect.sync(() => fs.rmSync(dir, { recursive: true, force: true }))
  )

/**
 * A fresh directory other users may read and search (0755): for files that session and job
 * programs read when they run as the sandbox's user.
 */
export const readableTempDir = (prefix: string) =>
  Effect.tap(tempDir(prefix), (dir) => Effect.sync(() => fs.chmodSync(dir, 0o755)))

/**
 * A fresh directory anyone may write (0777): for files that session and job programs create
 * when they run as the sandbox's user.
 */
export const writableTempDir = (prefix: string) =>
  Effect.tap(tempDir(prefix), (dir) => Effect.sync(() => fs.chmodSync(dir, 0o777)))
