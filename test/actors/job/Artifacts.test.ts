import { execFileSync } from "node:child_process"
import * as fs from "node:fs"
import * as path from "node:path"
import { expect, it } from "@effect/vitest"
import { Effect } from "effect"
import { openInside } from "../../../actors/job/Artifacts.js"
import { tempDir } from "../../support/TempDir.js"

const reasonOf = (root: string, name: string) =>
  Effect.promise(async () => {
    const opened = await openInside(fs.realpathSync(root), path.join(fs.realpathSync(root), name))
    if (typeof opened === "string") return opened
    await opened.close()
    return "opened"
  })

it.scoped(
  "an artifact is read only if it is a regular file whose real path stays in the job's directory",
  () =>
    Effect.gen(function* () {
      const outside = yield* tempDir("vibes-outside-")
      const root = yield* tempDir("vibes-job-")
      fs.writeFileSync(path.join(outside, "secret"), "no")
      fs.mkdirSync(path.join(root, "dist"))
      fs.writeFileSync(path.join(root, "dist", "app.js"), "yes")
      fs.symlinkSync(path.join(outside, "secret"), path.join(root, "dist", "escape"))
      fs.symlinkSync(outside, path.join(root, "swapped"))
      fs.symlinkSync(path.join(root, "dist", "app.js"), path.join(root, "alias"))
      execFileSync("mkfifo", [path.join(root, "pipe")])
      expect(yield* reasonOf(root, "dist/app.js")).toBe("opened")
      expect(yield* reasonOf(root, "alias")).toBe("opened")
      expect(yield* reasonOf(root, "dist/escape")).toBe("it leads outside the job's working directory")
      expect(yield* reasonOf(root, "swapped/secret")).toBe("it leads outside the job's working directory")
      expect(yield* reasonOf(root, "pipe")).toBe("it is not a regular file")
    })
)
