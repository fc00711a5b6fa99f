/**
 * Starting a job's command: a spawn that node refuses by throwing (E2BIG, a NUL in an argument)
 * is a failed attempt with the true reason, never a defect that would crash the job's entity.
 */
import * as os from "node:os"
import { describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import * as NodeContext from "@effect/platform-node/NodeContext"
import { JobSpec } from "../../../rpc/Jobs.js"
import * as Strategies from "../../../actors/job/Strategies.js"

const context = (spec: JobSpec): Strategies.Context => ({
  jobId: "0193d9b4-7c1e-7a2b-9c3d-4e5f60718293",
  attempt: 1,
  spec,
  env: { PATH: process.env["PATH"] ?? "/usr/bin:/bin" },
  home: os.tmpdir(),
  onOutput: () => Effect.void
})

describe("job strategies", () => {
  it.scopedLive("a command the kernel refuses to start (E2BIG) fails the attempt with that reason", () =>
    Effect.gen(function* () {
      const failed = yield* Effect.flip(
        Strategies.stream(context(JobSpec.make({ command: "echo", args: ["x".repeat(200 * 1024)] })))
      )
      expect(failed._tag).toBe("AttemptFailed")
      expect(failed.message).toContain("E2BIG")
      expect(failed.message).toContain("could not start echo")
    }).pipe(Effect.provide(NodeContext.layer))
  )

  it.scopedLive("an argument with a NUL byte fails the attempt instead of throwing", () =>
    Effect.gen(function* () {
      const failed = yield* Effect.flip(
        Strategies.stream(context(JobSpec.make({ command: "echo", args: ["a\u0000b"] })))
      )
      expect(failed._tag).toBe("AttemptFailed")
      expect(failed.message).toContain("not valid")
    }).pipe(Effect.provide(NodeContext.layer))
  )
})
