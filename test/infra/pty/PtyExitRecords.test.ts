import * as fs from "node:fs"
import * as path from "node:path"
import { describe, expect, it } from "@effect/vitest"
import { DateTime, Effect, Option } from "effect"
import * as PtyExitRecords from "../../../infra/pty/PtyExitRecords.js"
import { PtyExit } from "../../../infra/pty/PtyHost.js"
import { tempDir } from "../../support/TempDir.js"

const record = (id: string, exitCode: number, output = "") =>
  new PtyExitRecords.PtyExitRecord({
    id,
    exit: new PtyExit({ exitCode, signal: null }),
    exitedAt: DateTime.unsafeMake("2026-01-02T03:04:05Z"),
    seq: 1000 + output.length,
    tail: new TextEncoder().encode(output)
  })

const idsIn = (dataDir: string) =>
  Effect.map(PtyExitRecords.readAll(dataDir), (files) =>
    files.flatMap((file) => Option.getOrElse(file.records, () => [])).map((r) => r.id)
  )

describe("PTY exit records", () => {
  it.scoped("each host's records go to a private file of their own, and each record is taken once", () =>
    Effect.gen(function* () {
      const dataDir = yield* tempDir("vibes-exits-")
      const first = yield* PtyExitRecords.write(dataDir, [record("a", 1, "bye\r\n"), record("b", 2)])
      const second = yield* PtyExitRecords.write(dataDir, [record("c", 3)])
      expect(yield* PtyExitRecords.write(dataDir, [])).toEqual(Option.none())
      const files = [...Option.toArray(first), ...Option.toArray(second)]
      expect(new Set(files).size).toBe(2)
      for (const file of files) expect(fs.statSync(file).mode & 0o777).toBe(0o600)

      const records = yield* PtyExitRecords.make({ dataDir })
      const a = Option.getOrThrow(yield* records.take("a"))
      expect(a.exit).toMatchObject({ exitCode: 1, signal: null })
      expect(Buffer.from(a.tail).toString()).toBe("bye\r\n")
      expect(a.seq).toBe(1005)
      expect(DateTime.formatIso(a.exitedAt)).toBe("2026-01-02T03:04:05.000Z")
      expect(yield* records.take("a")).toEqual(Option.none())
      expect(yield* records.take("nobody")).toEqual(Option.none())
      expect((yield* idsIn(dataDir)).sort()).toEqual(["b", "c"])

      expect(Option.map(yield* records.take("c"), (r) => r.exit.exitCode)).toEqual(Option.some(3))
      expect(fs.existsSync(files[1] ?? "")).toBe(false)
    })
  )

  it.scoped("retain drops the records of PTYs no session runs any more, and files that are not records", () =>
    Effect.gen(function* () {
      const dataDir = yield* tempDir("vibes-exits-")
      yield* PtyExitRecords.write(dataDir, [record("kept", 0), record("stale", 1)])
      yield* PtyExitRecords.write(dataDir, [record("old", 2)])
      const garbage = path.join(dataDir, `${PtyExitRecords.filePrefix}garbage.json`)
      fs.writeFileSync(garbage, "{ not json")
      const unrelated = path.join(dataDir, "admin-token")
      fs.writeFileSync(unrelated, "secret")

      const records = yield* PtyExitRecords.make({ dataDir })
      expect(yield* records.retain(new Set(["kept"]))).toBe(2)
      expect(yield* idsIn(dataDir)).toEqual(["kept"])
      expect(fs.existsSync(garbage)).toBe(false)
      expect(fs.readFileSync(unrelated, "utf8")).toBe("secret")
      expect(
        fs.readdirSync(dataDir).filter((name) => name.startsWith(PtyExitRecords.filePrefix))
      ).toHaveLength(1)
    })
  )

  it.scoped("a data dir that is gone has no records", () =>
    Effect.gen(function* () {
      const dataDir = path.join(yield* tempDir("vibes-exits-"), "removed")
      const records = yield* PtyExitRecords.make({ dataDir })
      expect(yield* records.take("any")).toEqual(Option.none())
      expect(yield* records.retain(new Set())).toBe(0)
      expect(Option.isNone(yield* Effect.option(PtyExitRecords.write(dataDir, [record("x", 0)])))).toBe(true)
    })
  )
})
