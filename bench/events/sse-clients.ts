/**
 * The clients of the SSE latency benchmark: many raw `http.get` Server-Sent Events connections in
 * this process, each with a minimal incremental parser. For every measured event a client
 * receives it records the time from the event's `sentAt` to the arrival of the chunk that
 * completed it, so a missing or duplicated delivery shows too.
 */
import * as http from "node:http"
import { Effect, type Scope } from "effect"
import { BenchError } from "./harness.js"

/** Wall-clock milliseconds with sub-millisecond precision: the clock of `sentAt`. */
export const wallClock = (): number => performance.timeOrigin + performance.now()

/** What the clients received of one measurement. */
export interface Recording {
  /** Milliseconds from `sentAt` to arrival, at `seq * clients + client`; NaN where nothing came. */
  readonly latencies: Float64Array
  readonly received: number
  readonly duplicates: number
}

/** Connected clients. */
export interface Pool {
  readonly size: number
  /** Connections the server ended or broke after they had connected. */
  readonly dropped: () => number
  /** Starts a measurement of events `0 … events - 1`; events outside it (warm-up) are ignored. */
  readonly record: (events: number) => void
  /** Waits until every client has every measured event, or `timeoutMillis` has passed. */
  readonly finish: (timeoutMillis: number) => Effect.Effect<Recording>
}

/** Where and how the clients connect. */
export interface Options {
  readonly url: string
  readonly headers: Record<string, string>
  readonly clients: number
  /** Connections opened at once while ramping up; each batch waits for its `: connected`. */
  readonly batch: number
  readonly batchTimeoutMillis: number
  /** Called after each batch with the number connected so far. */
  readonly onBatch?: (connected: number) => Effect.Effect<void>
}

const messageOf = (cause: unknown): string => (cause instanceof Error ? cause.message : String(cause))

// The payload is the benchmark's own: its two numbers are read without parsing the whole JSON.
const numberAfter = (text: string, key: string): number => {
  const at = text.indexOf(key)
  return at < 0 ? Number.NaN : Number.parseFloat(text.slice(at + key.length, at + key.length + 40))
}

/** Opens `clients` SSE connections in batches; they are closed with the scope. */
export const connect = (options: Options): Effect.Effect<Pool, BenchError, Scope.Scope> =>
  Effect.gen(function* () {
    const size = options.clients
    const agent = new http.Agent({ keepAlive: true, maxSockets: Infinity })
    const requests: Array<http.ClientRequest> = []
    let latencies = new Float64Array(0)
    let events = 0
    let received = 0
    let duplicates = 0
    let dropped = 0
    let closing = false
    let onComplete: (() => void) | undefined

    const deliver = (client: number, block: string, arrived: number) => {
      let data = ""
      for (const line of block.split("\n")) {
        if (line.startsWith("data:")) data += line.charCodeAt(5) === 32 ? line.slice(6) : line.slice(5)
      }
      if (data === "") return
      const seq = numberAfter(data, '"seq":')
      if (!(seq >= 0 && seq < events)) return
      const slot = seq * size + client
      if (!Number.isNaN(latencies[slot] ?? 0)) {
        duplicates++
        return
      }
      latencies[slot] = arrived - numberAfter(data, '"sentAt":')
      received++
      if (received === events * size) onComplete?.()
    }

    const open = (client: number) =>
      new Promise<void>((resolve, reject) => {
        const request = http.get(
          options.url,
          { agent, headers: { accept: "text/event-stream", ...options.headers } },
          (response) => {
            if (response.statusCode !== 200) {
              response.resume()
              reject(new Error(`HTTP ${response.statusCode ?? "?"} from ${options.url}`))
              return
            }
            response.setEncoding("utf8")
            let buffer = ""
            let connected = false
            response.on("data", (chunk: string) => {
              const arrived = wallClock()
              buffer += chunk
              let end: number
              while ((end = buffer.indexOf("\n\n")) >= 0) {
                const block = buffer.slice(0, end)
                buffer = buffer.slice(end + 2)
                if (!connected) {
                  if (block.includes(": connected")) {
                    connected = true
                    resolve()
                  }
                  continue
                }
                deliver(client, block, arrived)
              }
            })
            response.once("close", () => {
              if (!connected) reject(new Error("the stream ended before ': connected'"))
              else if (!closing) dropped++
            })
          }
        )
        request.once("error", (error) => {
          if (!closing) reject(error)
        })
        requests.push(request)
      })

    yield* Effect.addFinalizer(() =>
      Effect.sync(() => {
        closing = true
        for (const request of requests) request.destroy()
        agent.destroy()
      })
    )

    for (let first = 0; first < size; first += options.batch) {
      const batch = Array.from({ length: Math.min(options.batch, size - first) }, (_, k) => first + k)
      yield* Effect.tryPromise({
        try: () => Promise.all(batch.map(open)),
        catch: (cause) =>
          new BenchError({
            message: `client ${first}…: cannot connect to ${options.url}: ${messageOf(cause)}`
          })
      }).pipe(
        Effect.timeoutFail({
          duration: options.batchTimeoutMillis,
          onTimeout: () =>
            new BenchError({
              message: `clients ${first}…${first + batch.length - 1} did not connect within ${options.batchTimeoutMillis} ms`
            })
        })
      )
      if (options.onBatch !== undefined) yield* options.onBatch(first + batch.length)
    }

    return {
      size,
      dropped: () => dropped,
      record: (count) => {
        events = count
        latencies = new Float64Array(count * size).fill(Number.NaN)
        received = 0
        duplicates = 0
      },
      finish: (timeoutMillis) =>
        Effect.async<void>((resume) => {
          if (received === events * size) return resume(Effect.void)
          const timer = setTimeout(() => resume(Effect.void), timeoutMillis)
          onComplete = () => {
            clearTimeout(timer)
            resume(Effect.void)
          }
          return Effect.sync(() => clearTimeout(timer))
        }).pipe(
          Effect.map((): Recording => {
            onComplete = undefined
            const recording = { latencies, received, duplicates }
            events = 0
            return recording
          })
        )
    } satisfies Pool
  })
