/**
 * Session recordings in the node's storage: `export` writes a session's history as asciicast v2
 * (`Asciicast.cast`) under `<tenant>/sessions/<session id>/recordings/<name>`, streaming it from
 * the log into storage; `download` streams one back.
 */
import { randomBytes } from "node:crypto"
import { Context, DateTime, Effect, Layer, Option, Schema, Stream } from "effect"
import { StorageUnavailable } from "../../rpc/Artifacts.js"
import {
  InvalidRecordingRequest,
  RecordingEntry,
  RecordingInfo,
  RecordingNotFound,
  type RecordingError
} from "../../rpc/Recordings.js"
import { SessionId, SessionNotFound, SessionUnavailable } from "../../rpc/Sessions.js"
import { EventLog } from "../../infra/eventlog/EventLog.js"
import * as Storage from "../../infra/storage/Storage.js"
import * as Asciicast from "./Asciicast.js"
import { SessionRegistry } from "./SessionRegistry.js"

/** The tenant sessions belong to (vibes has one until tenants arrive). */
const tenant = "default"

/** A session's recordings. */
export class Recordings extends Context.Tag("vibes/Recordings")<
  Recordings,
  {
    readonly export: (
      sessionId: string,
      range?: Asciicast.Range
    ) => Effect.Effect<RecordingInfo, RecordingError>
    /** The session's recordings, oldest first (their names start with the time). */
    readonly list: (sessionId: string) => Effect.Effect<ReadonlyArray<RecordingEntry>, RecordingError>
    readonly download: (
      sessionId: string,
      name: string
    ) => Effect.Effect<
      { readonly size: number; readonly body: Stream.Stream<Uint8Array, RecordingError> },
      RecordingError
    >
  }
>() {}

/** A new recording's name: the UTC time and 8 random hex digits. */
export const newName = (now: Date): string =>
  `${now
    .toISOString()
    .replace(/[-:]/g, "")
    .replace(/\.\d+Z$/, "Z")}-${randomBytes(4).toString("hex")}.cast`

/** The service on the node's registry, log and storage. */
export const layer = Layer.effect(
  Recordings,
  Effect.gen(function* () {
    const registry = yield* SessionRegistry
    const log = yield* EventLog
    const storage = yield* Storage.Storage
    const isSessionId = Schema.is(SessionId)

    const storageUnavailable = (error: { readonly message: string }) =>
      new StorageUnavailable({ message: `the recording storage is unavailable: ${error.message}` })

    const lookup = (sessionId: string) =>
      (isSessionId(sessionId) ? registry.get(sessionId) : Effect.succeed(Option.none())).pipe(
        Effect.mapError((error) => new SessionUnavailable({ sessionId, message: error.message })),
        Effect.flatMap(
          Option.match({
            onNone: () =>
              Effect.fail(new SessionNotFound({ sessionId, message: `no session with id ${sessionId}` })),
            onSome: Effect.succeed
          })
        )
      )

    const keyOf = (sessionId: string, name: string) =>
      Effect.mapError(
        Storage.checkedKey(tenant, `sessions/${sessionId}/recordings/${name}`),
        storageUnavailable
      )

    const exportCast: Recordings["Type"]["export"] = (sessionId, range = {}) =>
      Effect.gen(function* () {
        if (range.from !== undefined && range.to !== undefined && range.to < range.from) {
          return yield* new InvalidRecordingRequest({
            field: "to",
            message: `the range ends (${new Date(range.to).toISOString()}) before it starts (${new Date(range.from).toISOString()})`
          })
        }
        const row = yield* lookup(sessionId)
        const now = new Date()
        const name = newName(now)
        const key = yield* keyOf(sessionId, name)
        const body = Asciicast.cast(
          sessionId,
          {
            cols: row.cols,
            rows: row.rows,
            createdAt: row.createdAt
          },
          range
        ).pipe(
          Stream.mapError((error) => new SessionUnavailable({ sessionId, message: error.message })),
          Stream.provideService(EventLog, log)
        )
        const put = yield* storage
          .put(key, body, { contentType: "application/x-asciicast" })
          .pipe(Effect.catchTag("StorageError", (error) => Effect.fail(storageUnavailable(error))))
        return RecordingInfo.make({
          sessionId,
          name,
          size: put.size,
          sha256: put.sha256,
          createdAt: DateTime.unsafeFromDate(now)
        })
      }).pipe(Effect.withSpan("Recordings.export", { attributes: { sessionId } }))

    const download: Recordings["Type"]["download"] = (sessionId, name) =>
      Effect.gen(function* () {
        yield* lookup(sessionId)
        const key = yield* keyOf(sessionId, name)
        const info = yield* storage.head(key).pipe(
          Effect.catchTags({
            ObjectNotFound: () =>
              Effect.fail(
                new RecordingNotFound({
                  sessionId,
                  name,
                  message: `session ${sessionId} has no recording named ${name}`
                })
              ),
            StorageError: (error) => Effect.fail(storageUnavailable(error))
          })
        )
        const body = Storage.stream(storage, key).pipe(
          Stream.mapError((error) =>
            error._tag === "ObjectNotFound"
              ? new RecordingNotFound({ sessionId, name, message: `the recording ${name} is gone` })
              : storageUnavailable(error)
          )
        )
        return { size: info.size, body }
      })

    const list: Recordings["Type"]["list"] = (sessionId) =>
      Effect.gen(function* () {
        yield* lookup(sessionId)
        const prefix = yield* Effect.mapError(
          Storage.prefix(tenant, `sessions/${sessionId}/recordings/`),
          storageUnavailable
        )
        const entries: Array<RecordingEntry> = []
        let after: string | undefined
        for (;;) {
          const page = yield* storage
            .list(prefix, { after })
            .pipe(Effect.catchTag("StorageError", (error) => Effect.fail(storageUnavailable(error))))
          for (const object of page.objects) {
            entries.push(
              RecordingEntry.make({
                name: object.key.slice(prefix.length),
                size: object.size,
                createdAt: DateTime.unsafeFromDate(object.lastModified)
              })
            )
          }
          if (Option.isNone(page.next)) return entries
          after = page.next.value
        }
      })

    return Recordings.of({ export: exportCast, download, list })
  })
)
