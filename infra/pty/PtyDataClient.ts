/**
 * The server's end of the PTY host's data plane (`PtyDataProtocol`): one connection to
 * `<dataDir>/pty-data.sock`, opened on first use and again after it drops, which carries every
 * output stream and every write.
 *
 * A stream is granted a window of credit and gives it back as its reader takes what came, so
 * several frames are in flight and the host pauses only when the reader falls a window behind.
 * When the connection drops (the host restarts or goes), its streams fail with
 * `PtyHostUnavailable` and their readers resume with `output(id, nextSeq)`; a write in flight fails
 * the same way and is not sent again (a keystroke must not be typed twice).
 */
import * as net from "node:net"
import { Deferred, Effect, Option, type Scope, Stream } from "effect"
import { PtyData, PtyHostUnavailable, PtyNotFound, PtyNotRunning, type PtyOutput } from "./PtyHost.js"
import * as Protocol from "./PtyDataProtocol.js"

/** Output and input of the host's PTYs. */
export interface DataChannel {
  readonly output: (
    id: string,
    from: number,
    direct?: (data: PtyData) => boolean
  ) => Stream.Stream<PtyOutput, PtyNotFound | PtyHostUnavailable>
  readonly write: (
    id: string,
    data: Uint8Array
  ) => Effect.Effect<void, PtyNotFound | PtyNotRunning | PtyHostUnavailable>
}

type StreamItem = PtyOutput | PtyNotFound | PtyHostUnavailable

type WriteResult = PtyNotFound | PtyNotRunning | PtyHostUnavailable | undefined

/** One connection and what travels on it. */
interface Connection {
  readonly socket: net.Socket
  readonly streams: Map<number, (item: StreamItem) => void>
  readonly writes: Map<number, (result: WriteResult) => void>
  closed: boolean
}

/** What a stream's reader has taken and not yet given back as credit. */
const creditStep = Protocol.defaultWindowBytes / 4

/** A data channel to the host whose data socket is `file`; the connection is closed with the scope. */
export const make = (file: string): Effect.Effect<DataChannel, never, Scope.Scope> =>
  Effect.gen(function* () {
    let current: Connection | undefined
    let connecting: Deferred.Deferred<Connection, PtyHostUnavailable> | undefined
    let nextId = 1
    const allocate = () => {
      const id = nextId
      nextId = nextId >= 0xffffffff ? 1 : nextId + 1
      return id
    }

    const unavailable = (reason: string) =>
      new PtyHostUnavailable({ message: `the PTY host at ${file} is not reachable: ${reason}` })

    const drop = (connection: Connection, reason: string) => {
      if (connection.closed) return
      connection.closed = true
      if (current === connection) current = undefined
      connection.socket.destroy()
      const error = unavailable(reason)
      for (const deliver of connection.streams.values()) deliver(error)
      connection.streams.clear()
      for (const resolve of connection.writes.values()) resolve(error)
      connection.writes.clear()
    }

    const receive = (connection: Connection, message: Protocol.HostFrame) => {
      switch (message._tag) {
        case "Output":
          connection.streams.get(message.stream)?.(message.output)
          if (message.output._tag === "Exited") connection.streams.delete(message.stream)
          return
        case "NotFound": {
          const deliver = connection.streams.get(message.stream)
          connection.streams.delete(message.stream)
          deliver?.(new PtyNotFound({ id: "", message: message.message }))
          return
        }
        case "Written":
        case "WriteFailed": {
          const resolve = connection.writes.get(message.request)
          connection.writes.delete(message.request)
          if (resolve === undefined) return
          if (message._tag === "Written") return resolve(undefined)
          resolve(
            message.reason === "NotFound"
              ? new PtyNotFound({ id: "", message: message.message })
              : new PtyNotRunning({ id: "", message: message.message })
          )
        }
      }
    }

    const connect = Effect.async<Connection, PtyHostUnavailable>((resume) => {
      const socket = net.createConnection({ path: file })
      const connection: Connection = { socket, streams: new Map(), writes: new Map(), closed: false }
      const reader = new Protocol.FrameReader()
      const failed = (error: Error) => resume(Effect.fail(unavailable(error.message)))
      socket.once("error", failed)
      socket.once("connect", () => {
        socket.off("error", failed)
        socket.setNoDelay(true)
        socket.on("error", (error) => drop(connection, error.message))
        socket.on("close", () => drop(connection, "the connection closed"))
        socket.on("data", (chunk: Buffer) => {
          try {
            for (const { body, type } of reader.push(chunk)) {
              receive(connection, Protocol.decodeHostFrame(type, body))
            }
          } catch (error) {
            drop(connection, error instanceof Error ? error.message : String(error))
          }
        })
        resume(Effect.succeed(connection))
      })
      return Effect.sync(() => socket.destroy())
    })

    /** The open connection, or a new one (callers at the same moment share one attempt). */
    const connection: Effect.Effect<Connection, PtyHostUnavailable> = Effect.suspend(() => {
      if (current !== undefined && !current.closed) return Effect.succeed(current)
      if (connecting !== undefined) return Deferred.await(connecting)
      return Effect.uninterruptibleMask((restore) =>
        Effect.gen(function* () {
          const attempt = yield* Deferred.make<Connection, PtyHostUnavailable>()
          connecting = attempt
          const result = yield* Effect.exit(connect)
          connecting = undefined
          if (result._tag === "Success") current = result.value
          yield* Deferred.done(attempt, result)
          return yield* restore(Deferred.await(attempt))
        })
      )
    })

    yield* Effect.addFinalizer(() =>
      Effect.sync(() => {
        if (current !== undefined) drop(current, "the server is stopping")
      })
    )

    const send = (connection: Connection, message: Protocol.ClientFrame) => {
      if (!connection.closed) connection.socket.write(Protocol.encodeClientFrame(message))
    }

    const output = (
      id: string,
      from: number,
      direct?: (data: PtyData) => boolean
    ): Stream.Stream<PtyOutput, PtyNotFound | PtyHostUnavailable> =>
      Stream.unwrapScoped(
        Effect.gen(function* () {
          const conn = yield* connection
          /** What arrived and the reader has not taken yet (at most a window of data). */
          const pending: Array<StreamItem> = []
          let wake: (() => void) | undefined
          const stream = allocate()
          let taken = 0
          let ended = false
          /** The reader has an element it has not finished with (it asks for the next when done). */
          let holding = false
          const credit = (bytes: number) => {
            taken += bytes
            if (taken >= creditStep) {
              send(conn, { _tag: "Credit", stream, bytes: taken })
              taken = 0
            }
          }
          yield* Effect.acquireRelease(
            Effect.sync(() => {
              conn.streams.set(stream, (item) => {
                if (
                  direct !== undefined &&
                  item._tag === "Data" &&
                  !holding &&
                  pending.length === 0 &&
                  direct(item)
                ) {
                  credit(item.data.length)
                  return
                }
                pending.push(item)
                const waiting = wake
                wake = undefined
                waiting?.()
              })
              send(conn, { _tag: "Subscribe", stream, from, credit: Protocol.defaultWindowBytes, id })
            }),
            () =>
              Effect.sync(() => {
                if (!conn.streams.delete(stream)) return
                send(conn, { _tag: "Cancel", stream })
              })
          )
          const arrival = Effect.async<void>((resume) => {
            if (pending.length > 0) return resume(Effect.void)
            wake = () => resume(Effect.void)
            return Effect.sync(() => {
              wake = undefined
            })
          })
          /**
           * The next element. Data that arrived meanwhile is taken as one element, so a reader
           * that fell behind catches up in a few large steps rather than many small ones.
           */
          const take = (): PtyOutput | PtyNotFound | PtyHostUnavailable => {
            const first = pending.shift() as StreamItem
            if (first._tag !== "Data") return first
            let size = first.data.length
            let last = 0
            while (last < pending.length && size < Protocol.maxDataFrameBytes) {
              const item = pending[last] as StreamItem
              if (item._tag !== "Data") break
              size += item.data.length
              last++
            }
            const joined =
              last === 0
                ? first
                : new PtyData(
                    {
                      seq: first.seq,
                      data: Buffer.concat(
                        [first.data, ...pending.splice(0, last).map((item) => (item as PtyData).data)],
                        size
                      )
                    },
                    { disableValidation: true }
                  )
            credit(size)
            return joined
          }
          const next: Effect.Effect<
            PtyOutput,
            Option.Option<PtyNotFound | PtyHostUnavailable>
          > = Effect.suspend(() => {
            holding = false
            if (ended) return Effect.fail(Option.none())
            if (pending.length === 0) return Effect.zipRight(arrival, next)
            holding = true
            const item = take()
            switch (item._tag) {
              case "PtyNotFound":
                return Effect.fail(Option.some(new PtyNotFound({ id, message: item.message })))
              case "PtyHostUnavailable":
                return Effect.fail(Option.some(item))
              case "Exited":
                ended = true
                return Effect.succeed(item)
              default:
                return Effect.succeed(item)
            }
          })
          return Stream.repeatEffectOption(next)
        })
      )

    const write = (
      id: string,
      data: Uint8Array
    ): Effect.Effect<void, PtyNotFound | PtyNotRunning | PtyHostUnavailable> =>
      Effect.flatMap(connection, (conn) =>
        Effect.async<void, PtyNotFound | PtyNotRunning | PtyHostUnavailable>((resume) => {
          const request = allocate()
          conn.writes.set(request, (result) => {
            if (result === undefined) return resume(Effect.void)
            resume(Effect.fail(result._tag === "PtyHostUnavailable" ? result : withId(result, id)))
          })
          send(conn, { _tag: "Write", request, id, data })
          return Effect.sync(() => conn.writes.delete(request))
        })
      )

    return { output, write } satisfies DataChannel
  })

const withId = (error: PtyNotFound | PtyNotRunning, id: string) =>
  error._tag === "PtyNotFound"
    ? new PtyNotFound({ id, message: error.message })
    : new PtyNotRunning({ id, message: error.message })
