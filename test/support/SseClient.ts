/**
 * A Server-Sent Events client over a raw HTTP request, for tests: it can stop reading (to play a
 * slow client), and exposes every frame and comment it parsed.
 */
import * as http from "node:http"
import { Effect } from "effect"

/** One parsed SSE frame. */
export interface Frame {
  readonly id?: string
  readonly event: string
  readonly data: string
}

/** A connected client. */
export interface SseClient {
  readonly status: number
  readonly headers: http.IncomingHttpHeaders
  readonly frames: ReadonlyArray<Frame>
  readonly comments: ReadonlyArray<string>
  /** Resolves once `predicate` holds for what was received (checked after every chunk). */
  readonly until: (predicate: (client: SseClient) => boolean) => Effect.Effect<void>
  /** Resolves when the server ended the stream. */
  readonly ended: Effect.Effect<void>
  readonly pause: Effect.Effect<void>
  readonly resume: Effect.Effect<void>
  /** Offsets (`id:`) of the `message` frames received. */
  readonly ids: () => ReadonlyArray<number>
}

/** Opens `url` with `headers`; the connection is closed with the scope. */
export const connect = (url: string, headers: Record<string, string>) =>
  Effect.acquireRelease(
    Effect.async<{ client: SseClient; request: http.ClientRequest }, Error>((resume) => {
      const frames: Array<Frame> = []
      const comments: Array<string> = []
      const waiters = new Set<() => void>()
      let buffer = ""
      let endedResolve: () => void = () => undefined
      const endedPromise = new Promise<void>((resolve) => {
        endedResolve = resolve
      })
      const request = http.get(url, { headers: { accept: "text/event-stream", ...headers } }, (response) => {
        response.setEncoding("utf8")
        const client: SseClient = {
          status: response.statusCode ?? 0,
          headers: response.headers,
          frames,
          comments,
          until: (predicate) =>
            Effect.async<void>((done) => {
              const check = () => {
                if (predicate(client)) {
                  waiters.delete(check)
                  done(Effect.void)
                }
              }
              waiters.add(check)
              check()
              return Effect.sync(() => waiters.delete(check))
            }),
          ended: Effect.promise(() => endedPromise),
          pause: Effect.sync(() => response.pause()),
          resume: Effect.sync(() => response.resume()),
          ids: () =>
            frames.filter((f) => f.event === "message" && f.id !== undefined).map((f) => Number(f.id))
        }
        response.on("data", (chunk: string) => {
          buffer += chunk
          let at: number
          while ((at = buffer.indexOf("\n\n")) >= 0) {
            const block = buffer.slice(0, at)
            buffer = buffer.slice(at + 2)
            let id: string | undefined
            let event = "message"
            const data: Array<string> = []
            for (const line of block.split("\n")) {
              if (line.startsWith(":")) comments.push(line.slice(1).trim())
              else if (line.startsWith("id: ")) id = line.slice(4)
              else if (line.startsWith("event: ")) event = line.slice(7)
              else if (line.startsWith("data: ")) data.push(line.slice(6))
            }
            if (data.length > 0)
              frames.push({ ...(id !== undefined ? { id } : {}), event, data: data.join("\n") })
          }
          for (const waiter of [...waiters]) waiter()
        })
        response.on("end", () => {
          endedResolve()
          for (const waiter of [...waiters]) waiter()
        })
        response.on("error", () => endedResolve())
        resume(Effect.succeed({ client, request }))
      })
      request.on("error", (error) => resume(Effect.fail(error)))
    }),
    ({ request }) => Effect.sync(() => request.destroy())
  ).pipe(Effect.map(({ client }) => client))
