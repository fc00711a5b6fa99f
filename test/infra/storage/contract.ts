/**
 * The behaviour every storage backend must have; each backend's test file runs it.
 */
import { createHash, randomBytes } from "node:crypto"
import { expect, layer } from "@effect/vitest"
import { Chunk, Deferred, Effect, Either, Exit, Fiber, type Layer, Option, Stream } from "effect"
import * as Storage from "../../../infra/storage/Storage.js"

const sha256 = (bytes: Uint8Array) => createHash("sha256").update(bytes).digest("hex")

/** `bytes` as a stream of chunks of at most `size`. */
export const chunked = (bytes: Uint8Array, size = 64 * 1024) =>
  Stream.fromIterable(
    Array.from({ length: Math.ceil(bytes.length / size) }, (_, i) => bytes.subarray(i * size, (i + 1) * size))
  )

const collect = <E>(stream: Stream.Stream<Uint8Array, E>) =>
  Effect.map(Stream.runCollect(stream), (chunks) => Buffer.concat(Chunk.toReadonlyArray(chunks)))

const read = (storage: Storage.Storage["Type"], key: Storage.ObjectKey, range?: Storage.ByteRange) =>
  collect(Storage.stream(storage, key, range))

let tenants = 0
/** A tenant no other test of the run uses. */
const freshTenant = () => `t${process.pid}x${Date.now().toString(36)}x${tenants++}`

const keyOf = (tenant: string, path: string) => Either.getOrThrow(Storage.key(tenant, path))

/** Runs the contract against the backend `storage` gives. */
export const storageContract = <E>(name: string, storage: Layer.Layer<Storage.Storage, E>) =>
  layer(storage, { timeout: 120_000, excludeTestServices: true })(name, (it) => {
    for (const size of [0, 1, 5 * 1024 * 1024 + 1]) {
      it.effect(`round-trips ${size} bytes exactly, with their size and sha256`, () =>
        Effect.gen(function* () {
          const storage = yield* Storage.Storage
          const bytes = randomBytes(size)
          const key = keyOf(freshTenant(), `jobs/a b/ünïcode-${size}.bin`)
          const put = yield* storage.put(key, chunked(bytes))
          expect(put).toEqual({ key, size, sha256: sha256(bytes) })
          const back = yield* read(storage, key)
          expect(back.length).toBe(size)
          expect(sha256(back)).toBe(sha256(bytes))
          const info = yield* storage.head(key)
          expect(info.size).toBe(size)
          if (Option.isSome(info.sha256)) expect(info.sha256.value).toBe(sha256(bytes))
        })
      )
    }

    it.effect("reads a byte range, an open-ended range, and refuses a range past the end", () =>
      Effect.gen(function* () {
        const storage = yield* Storage.Storage
        const bytes = randomBytes(100_000)
        const key = keyOf(freshTenant(), "ranged")
        yield* storage.put(key, chunked(bytes, 7_000))
        expect(yield* read(storage, key, { start: 10, end: 19 })).toEqual(bytes.subarray(10, 20))
        expect(yield* read(storage, key, { start: 99_990 })).toEqual(bytes.subarray(99_990))
        expect(yield* read(storage, key, { start: 99_000, end: 1_000_000 })).toEqual(bytes.subarray(99_000))
        const download = yield* Effect.scoped(storage.get(key, { start: 5, end: 9 }))
        expect([download.start, download.end, download.info.size]).toEqual([5, 9, 100_000])
        const past = yield* Effect.flip(read(storage, key, { start: 100_000 }))
        expect(past._tag).toBe("InvalidRange")
        const empty = keyOf(freshTenant(), "empty")
        yield* storage.put(empty, Stream.empty)
        expect((yield* Effect.flip(read(storage, empty, { start: 0 })))._tag).toBe("InvalidRange")
      })
    )

    it.effect("replaces an object whole, and reading or heading a missing key is ObjectNotFound", () =>
      Effect.gen(function* () {
        const storage = yield* Storage.Storage
        const key = keyOf(freshTenant(), "x/y")
        yield* storage.put(key, Stream.make(new Uint8Array([1, 2, 3])))
        yield* storage.put(key, Stream.make(new Uint8Array([4, 5])))
        expect([...(yield* read(storage, key))]).toEqual([4, 5])
        const missing = keyOf(freshTenant(), "nothing/here")
        expect((yield* Effect.flip(storage.head(missing)))._tag).toBe("ObjectNotFound")
        expect((yield* Effect.flip(read(storage, missing)))._tag).toBe("ObjectNotFound")
      })
    )

    it.effect("lists by prefix in key order, page by page, never across a tenant or prefix boundary", () =>
      Effect.gen(function* () {
        const storage = yield* Storage.Storage
        const tenant = freshTenant()
        const names = Array.from({ length: 25 }, (_, i) => `job/${String(i).padStart(3, "0")}/out.txt`)
        yield* Effect.forEach(
          [...names, "job2/other", "jobs", "zzz"],
          (name) => storage.put(keyOf(tenant, name), Stream.make(new TextEncoder().encode(name))),
          { concurrency: 4 }
        )
        // A tenant whose name starts with this one's, whose keys must not show.
        yield* storage.put(keyOf(`${tenant}0`, "job/000/out.txt"), Stream.make(new Uint8Array([0])))
        const prefix = Either.getOrThrow(Storage.prefix(tenant, "job/"))
        const seen: Array<string> = []
        let after: string | undefined = undefined
        let pages = 0
        for (;;) {
          const page: Storage.Page = yield* storage.list(prefix, { after, limit: 10 })
          pages++
          seen.push(...page.objects.map((object) => object.key))
          for (const object of page.objects) expect(object.size).toBe(object.key.length - tenant.length - 1)
          if (Option.isNone(page.next)) break
          after = page.next.value
        }
        expect(pages).toBe(3)
        expect(seen).toEqual(names.map((name) => `${tenant}/${name}`))
        const whole = yield* storage.list(Either.getOrThrow(Storage.prefix(tenant, "")))
        expect(whole.objects.map((object) => object.key)).toEqual(
          [...names, "job2/other", "jobs", "zzz"].map((name) => `${tenant}/${name}`)
        )
      })
    )

    it.effect("deletes an object; deleting a missing one succeeds", () =>
      Effect.gen(function* () {
        const storage = yield* Storage.Storage
        const tenant = freshTenant()
        const key = keyOf(tenant, "deep/er/file")
        yield* storage.put(key, Stream.make(new Uint8Array([9])))
        yield* storage.delete(key)
        yield* storage.delete(key)
        expect((yield* Effect.flip(storage.head(key)))._tag).toBe("ObjectNotFound")
        const listed = yield* storage.list(Either.getOrThrow(Storage.prefix(tenant, "")))
        expect(listed.objects).toEqual([])
      })
    )

    it.effect(
      "a body that fails part-way (past the first multipart part) leaves nothing, nor the old object changed",
      () =>
        Effect.gen(function* () {
          const storage = yield* Storage.Storage
          const tenant = freshTenant()
          const fresh = keyOf(tenant, "fails")
          const existing = keyOf(tenant, "kept")
          yield* storage.put(existing, Stream.make(new Uint8Array([7, 7, 7])))
          const failing = chunked(randomBytes(6 * 1024 * 1024)).pipe(
            Stream.concat(Stream.fail("the producer broke" as const))
          )
          expect(yield* Effect.flip(storage.put(fresh, failing))).toBe("the producer broke")
          expect(yield* Effect.flip(storage.put(existing, failing))).toBe("the producer broke")
          expect((yield* Effect.flip(storage.head(fresh)))._tag).toBe("ObjectNotFound")
          expect([...(yield* read(storage, existing))]).toEqual([7, 7, 7])
          const listed = yield* storage.list(Either.getOrThrow(Storage.prefix(tenant, "")))
          expect(listed.objects.map((object) => object.key)).toEqual([existing])
        })
    )

    it.effect("an interrupted put leaves nothing visible", () =>
      Effect.gen(function* () {
        const storage = yield* Storage.Storage
        const tenant = freshTenant()
        const key = keyOf(tenant, "interrupted")
        const started = yield* Deferred.make<void>()
        const endless = chunked(randomBytes(6 * 1024 * 1024)).pipe(
          Stream.concat(Stream.fromEffect(Deferred.succeed(started, undefined)).pipe(Stream.drain)),
          Stream.concat(Stream.never)
        )
        const fiber = yield* Effect.fork(storage.put(key, endless))
        yield* Deferred.await(started)
        const exit = yield* Fiber.interrupt(fiber)
        expect(Exit.isInterrupted(exit)).toBe(true)
        expect((yield* Effect.flip(storage.head(key)))._tag).toBe("ObjectNotFound")
        const listed = yield* storage.list(Either.getOrThrow(Storage.prefix(tenant, "")))
        expect(listed.objects).toEqual([])
      })
    )
  })
