/**
 * 1 GB through each backend and back, byte for byte (checked by sha256, never held in memory).
 */
import { createHash, randomBytes } from "node:crypto"
import { expect, layer } from "@effect/vitest"
import { Effect, Either, Layer, Stream } from "effect"
import * as LocalStorage from "../../../infra/storage/LocalStorage.js"
import * as S3Storage from "../../../infra/storage/S3Storage.js"
import * as Storage from "../../../infra/storage/Storage.js"
import { tempDir } from "../../support/TempDir.js"
import * as TestS3 from "../../support/TestS3.js"

const total = 1024 * 1024 * 1024
const chunk = 1024 * 1024

const roundTrip = Effect.gen(function* () {
  const storage = yield* Storage.Storage
  const key = Either.getOrThrow(Storage.key("long", "one-gigabyte.bin"))
  const sent = createHash("sha256")
  const body = Stream.range(1, total / chunk).pipe(
    Stream.map(() => {
      const bytes = randomBytes(chunk)
      sent.update(bytes)
      return new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.length)
    })
  )
  const put = yield* storage.put(key, body)
  const expected = sent.digest("hex")
  expect(put).toMatchObject({ size: total, sha256: expected })
  const received = createHash("sha256")
  let size = 0
  yield* Stream.runForEach(Storage.stream(storage, key), (bytes) =>
    Effect.sync(() => {
      received.update(bytes)
      size += bytes.length
    })
  )
  expect(size).toBe(total)
  expect(received.digest("hex")).toBe(expected)
  yield* storage.delete(key)
})

layer(
  Layer.scoped(
    Storage.Storage,
    Effect.flatMap(tempDir("vibes-storage-long-"), (dir) => LocalStorage.make(dir))
  ),
  { timeout: 300_000, excludeTestServices: true }
)("local storage, 1 GB", (it) => {
  it.effect("round-trips 1 GB exactly", () => roundTrip, 300_000)
})

layer(
  Layer.scoped(
    Storage.Storage,
    Effect.flatMap(TestS3.start, ({ settings }) => S3Storage.make(settings))
  ),
  { timeout: 300_000, excludeTestServices: true }
)("S3 storage, 1 GB", (it) => {
  it.effect("round-trips 1 GB exactly through a multipart upload", () => roundTrip, 300_000)
})
