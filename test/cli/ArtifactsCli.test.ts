import * as fs from "node:fs"
import * as path from "node:path"
import { describe, expect, it, layer } from "@effect/vitest"
import { Context, Duration, Effect, Layer } from "effect"
import { progressLine } from "../../src/cli/ArtifactCommands.js"
import { formatBytes } from "../../src/cli/Display.js"
import { tempDir, writableTempDir } from "../support/TempDir.js"
import * as TestServer from "../support/TestServer.js"
import * as Vibes from "../support/VibesProcess.js"

class Node extends Context.Tag("test/Node")<Node, TestServer.Running>() {}

const NodeLive = Layer.scoped(Node, TestServer.startWith({ jobKillGrace: Duration.seconds(1) }))

const vibes = (args: ReadonlyArray<string>) =>
  Effect.flatMap(Node, (server) =>
    Vibes.run(args, Vibes.childEnv({ VIBES_URL: server.url, VIBES_TOKEN: server.token }))
  )

const jobIdIn = (stderr: string) => /^job ([0-9a-f-]{36}) queued$/m.exec(stderr)?.[1] ?? ""

describe("artifact progress", () => {
  it("shows sizes for people and a bar with the share done", () => {
    expect(formatBytes(512)).toBe("512 B")
    expect(formatBytes(1536)).toBe("1.5 KiB")
    expect(formatBytes(5 * 1024 * 1024)).toBe("5.0 MiB")
    expect(progressLine(5, 10, 10)).toBe("[#####-----]  50%  5 B / 10 B")
    expect(progressLine(0, 0, 4)).toBe("[####] 100%  0 B / 0 B")
  })
})

layer(NodeLive, { timeout: 120_000, excludeTestServices: true })("artifact commands", (it) => {
  it.scoped(
    "vibes run --artifact keeps files; vibes artifacts lists them; vibes artifact get saves one",
    () =>
      Effect.gen(function* () {
        const cwd = yield* writableTempDir("vibes-cli-artifacts-")
        const out = yield* tempDir("vibes-cli-download-")
        const ran = yield* vibes([
          "run",
          "--cwd",
          cwd,
          "--artifact",
          "dist/**",
          "--artifact",
          "report.xml",
          "--",
          "sh",
          "-c",
          "mkdir -p dist && head -c 300000 /dev/urandom > dist/app.bin && echo ok > report.xml && echo nope > other"
        ])
        expect(ran.code).toBe(0)
        expect(ran.stderr).toContain("[vibes] kept artifact dist/app.bin (300000 bytes, sha256 ")
        const jobId = jobIdIn(ran.stderr)

        const listed = yield* vibes(["artifacts", jobId])
        expect(listed.code).toBe(0)
        const lines = listed.stdout.trim().split("\n")
        expect(lines[0]).toMatch(/^\s*SIZE\s+SHA256\s+NAME$/)
        expect(lines.slice(1).map((line) => line.split(/\s+/).filter(Boolean).slice(-1)[0])).toEqual([
          "dist/app.bin",
          "report.xml"
        ])
        const asJson = yield* vibes(["artifacts", jobId, "--json"])
        expect(JSON.parse(asJson.stdout)).toMatchObject([
          { name: "dist/app.bin", size: 300000 },
          { name: "report.xml" }
        ])

        const target = path.join(out, "app.bin")
        const saved = yield* vibes(["artifact", "get", jobId, "dist/app.bin", "-o", target])
        expect(saved.code).toBe(0)
        expect(fs.readFileSync(target).equals(fs.readFileSync(path.join(cwd, "dist", "app.bin")))).toBe(true)
        expect(fs.readdirSync(out)).toEqual(["app.bin"])
        const toStdout = yield* vibes(["artifact", "get", jobId, "report.xml", "-o", "-"])
        expect([toStdout.code, toStdout.stdout]).toEqual([0, "ok\n"])
      })
  )

  it.scoped("an unknown artifact fails with 1 and writes nothing; a bad job id is bad usage (2)", () =>
    Effect.gen(function* () {
      const cwd = yield* writableTempDir("vibes-cli-artifacts-")
      const out = yield* tempDir("vibes-cli-download-")
      const ran = yield* vibes(["run", "--cwd", cwd, "--artifact", "a", "--", "sh", "-c", "echo a > a"])
      const jobId = jobIdIn(ran.stderr)
      const missing = yield* vibes(["artifact", "get", jobId, "b", "-o", path.join(out, "b")])
      expect(missing.code).toBe(1)
      expect(missing.stderr).toContain(`has no artifact named "b"`)
      expect(fs.readdirSync(out)).toEqual([])
      expect((yield* vibes(["artifacts", "not-a-job"])).code).toBe(2)
      expect((yield* vibes(["run", "--artifact", "../x", "--", "true"])).code).toBe(2)
    })
  )
})
