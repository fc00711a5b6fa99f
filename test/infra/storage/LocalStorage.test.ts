import * as fs from "node:fs"
import * as path from "node:path"
import { expect, layer } from "@effect/vitest"
import { Effect, Either, Layer, Option, Stream } from "effect"
import * as LocalStorage from "../../../infra/storage/LocalStorage.js"
import * as Storage from "../../../infra/storage/Storage.js"
import { tempDir } from "../../support/TempDir.js"
import { chunked, storageContract } from "./contract.js"

const root = Layer.scoped(
  Storage.Storage,
  Effect.flatMap(tempDir("vibes-storage-"), (dir) => LocalStorage.make(dir))
)

storageContract("local storage", root)

layer(Layer.empty, { excludeTestServices: true })("local storage on disk", (it) => {
  it.scoped("keeps objects under objects/<tenant>/, leaves no temporary file, and records the sha256", () =>
    Effect.gen(function* () {
      const dir = yield* tempDir("vibes-storage-")
      const storage = yield* LocalStorage.make(dir)
      const key = Either.getOrThrow(Storage.key("acme", "jobs/1/out.bin"))
      const bytes = new Uint8Array(300_000).fill(3)
      const put = yield* storage.put(key, chunked(bytes))
      expect(fs.readFileSync(path.join(dir, "objects", "acme", "jobs", "1", "out.bin")).equals(bytes)).toBe(
        true
      )
      expect(fs.readdirSync(path.join(dir, "tmp"))).toEqual([])
      expect(yield* storage.head(key)).toMatchObject({ size: 300_000, sha256: Option.some(put.sha256) })
      const failed = yield* Effect.flip(storage.put(key, Stream.fail("broken")))
      expect(failed).toBe("broken")
      expect(fs.readdirSync(path.join(dir, "tmp"))).toEqual([])
    })
  )

  it.scoped("a content file changed behind its back has no sha256 rather than a wrong one", () =>
    Effect.gen(function* () {
      const dir = yield* tempDir("vibes-storage-")
      const storage = yield* LocalStorage.make(dir)
      const key = Either.getOrThrow(Storage.key("acme", "edited"))
      yield* storage.put(key, Stream.make(new Uint8Array([1, 2, 3])))
      const file = path.join(dir, "objects", "acme", "edited")
      fs.writeFileSync(`${file}.new`, "other")
      fs.renameSync(`${file}.new`, file)
      expect((yield* storage.head(key)).sha256).toEqual(Option.none())
    })
  )

  it.scoped("a key whose path runs through an object is refused with a StorageError that says why", () =>
    Effect.gen(function* () {
      const dir = yield* tempDir("vibes-storage-")
      const storage = yield* LocalStorage.make(dir)
      yield* storage.put(Either.getOrThrow(Storage.key("acme", "a")), Stream.make(new Uint8Array([1])))
      const refused = yield* Effect.flip(
        storage.put(Either.getOrThrow(Storage.key("acme", "a/b")), Stream.make(new Uint8Array([2])))
      )
      expect(refused._tag).toBe("StorageError")
      expect(refused.message).toContain("part of its path is an object")
    })
  )
})
