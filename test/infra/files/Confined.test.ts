import * as fs from "node:fs"
import * as path from "node:path"
import { describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import * as Confined from "../../../infra/files/Confined.js"
import { tempDir } from "../../support/TempDir.js"

/** A root with `inside/file.txt`, and `secret.txt` beside the root (outside it). */
const fixture = Effect.gen(function* () {
  const base = fs.realpathSync(yield* tempDir("vibes-confined-"))
  const root = path.join(base, "root")
  fs.mkdirSync(path.join(root, "inside", "deeper"), { recursive: true })
  fs.writeFileSync(path.join(root, "inside", "file.txt"), "inside\n")
  fs.writeFileSync(path.join(base, "secret.txt"), "secret\n")
  return { base, root }
})

const refusal = (run: () => Promise<unknown>) =>
  Effect.promise(() =>
    run().then(
      () => "opened",
      (error: unknown) => (error instanceof Confined.PathRefused ? error.reason : `other: ${String(error)}`)
    )
  )

describe("confined paths", () => {
  it.scoped("a path inside the root opens, and says where it really is", () =>
    Effect.gen(function* () {
      const { root } = yield* fixture
      const opened = yield* Effect.promise(() => Confined.open(root, "inside/./file.txt"))
      expect(opened.real).toBe(path.join(root, "inside", "file.txt"))
      expect(opened.stat.size).toBe(7)
      yield* Effect.promise(opened.close)
    })
  )

  it.scoped(
    "absolute, '..', NUL, backslash and percent-encoded paths are refused before the disk is touched",
    () =>
      Effect.gen(function* () {
        const { root } = yield* fixture
        const cases: ReadonlyArray<readonly [string, string]> = [
          ["/etc/passwd", "absolute"],
          ["../secret.txt", "parent"],
          ["inside/../../secret.txt", "parent"],
          ["inside/..", "parent"],
          ["inside/file.txt\u0000.png", "nul"],
          ["..\\secret.txt", "backslash"],
          ["%2e%2e/secret.txt", "encoded"],
          ["..%2fsecret.txt", "encoded"],
          ["inside%2F..%2F..%2Fsecret.txt", "encoded"],
          ["%252e%252e/secret.txt", "encoded"]
        ]
        for (const [relative, reason] of cases) {
          expect(yield* refusal(() => Confined.open(root, relative)), relative).toBe(reason)
          expect(yield* refusal(() => Confined.openParent(root, relative)), relative).toBe(reason)
        }
      })
  )

  it.scoped("symbolic links that lead outside are refused, at the end of a path or in the middle", () =>
    Effect.gen(function* () {
      const { base, root } = yield* fixture
      fs.symlinkSync("/", path.join(root, "to-root"))
      fs.symlinkSync(path.join(base, "secret.txt"), path.join(root, "secret-link"))
      fs.symlinkSync(base, path.join(root, "up"))
      fs.symlinkSync("inside/file.txt", path.join(root, "harmless"))
      expect(yield* refusal(() => Confined.open(root, "to-root/etc/passwd"))).toBe("outside")
      expect(yield* refusal(() => Confined.open(root, "up/secret.txt"))).toBe("outside")
      // A final symlink is never followed, even one that stays inside.
      expect(yield* refusal(() => Confined.open(root, "secret-link"))).toBe("symlink")
      expect(yield* refusal(() => Confined.open(root, "harmless"))).toBe("symlink")
      expect(yield* refusal(() => Confined.openParent(root, "to-root/tmp/x"))).toBe("outside")
      // The directory of a name to create is not followed either when it is a link.
      expect(yield* refusal(() => Confined.openParent(root, "up/new.txt"))).toBe("symlink")
    })
  )

  it.scoped("a directory swapped for a symlink after the path was checked is caught at the open", () =>
    Effect.gen(function* () {
      const { base, root } = yield* fixture
      fs.mkdirSync(path.join(base, "elsewhere", "deeper"), { recursive: true })
      fs.writeFileSync(path.join(base, "elsewhere", "file.txt"), "elsewhere\n")
      const swap = async () => {
        await fs.promises.rename(path.join(root, "inside"), path.join(base, "moved"))
        await fs.promises.symlink(path.join(base, "elsewhere"), path.join(root, "inside"))
      }
      expect(yield* refusal(() => Confined.open(root, "inside/file.txt", "read", { beforeOpen: swap }))).toBe(
        "outside"
      )
      const unswap = async () => {
        await fs.promises.unlink(path.join(root, "inside"))
        await fs.promises.rename(path.join(base, "moved"), path.join(root, "inside"))
      }
      yield* Effect.promise(unswap)
      expect(yield* refusal(() => Confined.openParent(root, "inside/new.txt", { beforeOpen: swap }))).toBe(
        "symlink"
      )
      // Swapped a level up, the link is in the middle of the path: followed, and caught as outside.
      yield* Effect.promise(unswap)
      expect(
        yield* refusal(() => Confined.openParent(root, "inside/deeper/new.txt", { beforeOpen: swap }))
      ).toBe("outside")
      expect(fs.existsSync(path.join(base, "elsewhere", "new.txt"))).toBe(false)
    })
  )

  it.scoped(
    "a name reached through the checked directory stays there when the path is swapped afterwards",
    () =>
      Effect.gen(function* () {
        const { base, root } = yield* fixture
        fs.mkdirSync(path.join(base, "elsewhere"))
        const parent = yield* Effect.promise(() => Confined.openParent(root, "inside/new.txt"))
        // The swap happens after the check: the write still lands in the directory that was checked.
        fs.renameSync(path.join(root, "inside"), path.join(root, "inside-moved"))
        fs.symlinkSync(path.join(base, "elsewhere"), path.join(root, "inside"))
        fs.writeFileSync(parent.at, "written\n")
        yield* Effect.promise(parent.dir.close)
        expect(fs.readFileSync(path.join(root, "inside-moved", "new.txt"), "utf8")).toBe("written\n")
        expect(fs.existsSync(path.join(base, "elsewhere", "new.txt"))).toBe(false)
      })
  )
})
