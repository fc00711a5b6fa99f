/**
 * A small filesystem of its own (a tmpfs of a given size, mounted on a fresh directory) for tests
 * of what happens when a disk fills up. Mounting needs root, as the CI and test machines run.
 */
import { execFileSync } from "node:child_process"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { Effect } from "effect"

/** A mounted tmpfs of `megabytes`, unmounted and removed when the scope closes. */
export const make = (megabytes: number) =>
  Effect.acquireRelease(
    Effect.try({
      try: () => {
        const dir = fs.mkdtempSync(path.join(os.tmpdir(), "vibes-smallfs-"))
        execFileSync("mount", ["-t", "tmpfs", "-o", `size=${megabytes}m,mode=0755`, "tmpfs", dir])
        return dir
      },
      catch: (error) =>
        new Error(`cannot mount a ${megabytes} MiB tmpfs (this test needs root): ${String(error)}`)
    }),
    (dir) =>
      Effect.sync(() => {
        execFileSync("umount", ["-l", dir])
        fs.rmSync(dir, { recursive: true, force: true })
      })
  )

/** Free bytes of the filesystem `dir` is on. */
export const free = (dir: string): number => {
  const stats = fs.statfsSync(dir)
  return stats.bavail * stats.bsize
}

/** Total bytes of the filesystem `dir` is on. */
export const size = (dir: string): number => {
  const stats = fs.statfsSync(dir)
  return stats.blocks * stats.bsize
}
