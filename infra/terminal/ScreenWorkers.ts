/**
 * Screen models parsed off the byte path: every model of this node lives in one worker thread
 * (`ScreenWorker`), started with the layer (and again if it dies) and stopped with it. A model
 * here has the `ScreenModel` interface; feeding it posts the bytes and returns at once, so the
 * thread that moves terminal bytes never parses them, and the worker parses in parallel on
 * another core.
 *
 * The worker is one per node, not one per session: a thread costs megabytes, a model kilobytes.
 * If it dies (a bug in the emulator), every model's pending calls die with it and the sessions'
 * entities are restarted, which rebuild their screens from history.
 */
import * as fs from "node:fs"
import { Worker } from "node:worker_threads"
import { Context, Deferred, Effect, FiberId, Layer, type Scope } from "effect"
import type * as ScreenModel from "./ScreenModel.js"
import type { FromWorker, ToWorker, ToWorkerBatch } from "./ScreenWorkerProtocol.js"

/** Makes screen models in the node's screen worker. */
export class ScreenWorkers extends Context.Tag("vibes/ScreenWorkers")<
  ScreenWorkers,
  {
    /** A fresh, empty screen in the worker, closed with the scope. */
    readonly make: (
      options: ScreenModel.Options
    ) => Effect.Effect<ScreenModel.ScreenModel, never, Scope.Scope>
  }
>() {}

/**
 * The worker's code: beside this module (the compiled tree), at the root of the CLI bundle (this
 * module is then in a chunk), or the TypeScript source through tsx (tests, development).
 */
const workerSource = (): { readonly code: string } | { readonly url: URL } => {
  const here = import.meta.url
  if (here.endsWith(".ts")) {
    const url = JSON.stringify(new URL("./ScreenWorker.ts", here).href)
    return {
      code: `import("tsx/esm/api").then((tsx) => { tsx.register(); return import(${url}) })`
    }
  }
  for (const candidate of ["./ScreenWorker.js", "./screen-worker.js", "../screen-worker.js"]) {
    const url = new URL(candidate, here)
    if (fs.existsSync(url)) return { url }
  }
  throw new Error(`the screen worker's code is missing beside ${here}`)
}

interface Hooks {
  readonly onReply?: ((reply: string) => void) | undefined
  readonly onBell?: (() => void) | undefined
  readonly onTitle?: ((title: string) => void) | undefined
}

type Pending = (message: FromWorker) => void

/** Screen models in one worker thread, started with the layer and terminated with it. */
export const layer: Layer.Layer<ScreenWorkers> = Layer.scoped(
  ScreenWorkers,
  Effect.gen(function* () {
    let worker: Worker | undefined
    let nextId = 1
    const hooks = new Map<number, Hooks>()
    const pending = new Map<number, Pending>()

    const receive = (message: FromWorker) => {
      switch (message._tag) {
        case "Reply":
          return hooks.get(message.id)?.onReply?.(message.reply)
        case "Bell":
          return hooks.get(message.id)?.onBell?.()
        case "Title":
          return hooks.get(message.id)?.onTitle?.(message.title)
        default: {
          const resolve = pending.get(message.request)
          pending.delete(message.request)
          resolve?.(message)
        }
      }
    }

    const start = () => {
      const source = workerSource()
      const started = "code" in source ? new Worker(source.code, { eval: true }) : new Worker(source.url)
      // The node does not wait for the worker to exit.
      started.unref()
      started.on("message", receive)
      const died = (reason: string) => {
        if (worker !== started) return
        worker = undefined
        const failed = [...pending.values()]
        pending.clear()
        for (const resolve of failed) resolve({ _tag: "Failed", request: 0, message: reason })
      }
      started.on("error", (error) => died(`the screen worker failed: ${error.message}`))
      started.on("exit", (code) => died(`the screen worker exited (code ${code})`))
      return started
    }

    /**
     * Sends a message: with the others of this turn of the event loop, as one batch, so many
     * sessions printing cost one message to the worker per turn rather than one per chunk. The
     * batch's bytes are copied into one buffer of their own, handed over rather than cloned:
     * cloning a view copies its whole underlying buffer (a socket's read, a pool's slab).
     */
    let outbox: Array<ToWorker> = []
    let outboxBytes = 0
    const flush = () => {
      const messages = outbox
      const buffer = new ArrayBuffer(outboxBytes)
      outbox = []
      outboxBytes = 0
      let at = 0
      const sent = messages.map((message) => {
        if (!("data" in message)) return message
        const data = new Uint8Array(buffer, at, message.data.length)
        data.set(message.data)
        at += message.data.length
        return { ...message, data }
      })
      worker ??= start()
      worker.postMessage({ messages: sent } satisfies ToWorkerBatch, [buffer])
    }
    const post = (message: ToWorker) => {
      if (outbox.length === 0) setImmediate(flush)
      outbox.push(message)
      if ("data" in message) outboxBytes += message.data.length
    }

    // Started now rather than with the first model: loading the emulator takes the thread about
    // a tenth of a second, which the first session's program would wait for an answer to a query.
    worker = start()

    yield* Effect.addFinalizer(() =>
      Effect.promise(async () => {
        const running = worker
        worker = undefined
        if (running !== undefined) await running.terminate()
      })
    )

    /** Sends a request and waits for its answer; the worker's failure is a defect. */
    const call = <A>(message: (request: number) => ToWorker, result: (answer: FromWorker) => A) =>
      Effect.flatMap(
        Effect.sync(() => {
          const request = nextId++
          const done = Deferred.unsafeMake<A>(FiberId.none)
          pending.set(request, (answer) =>
            Deferred.unsafeDone(
              done,
              answer._tag === "Failed" ? Effect.dieMessage(answer.message) : Effect.succeed(result(answer))
            )
          )
          post(message(request))
          return done
        }),
        Deferred.await
      )

    const make = (options: ScreenModel.Options) =>
      Effect.acquireRelease(
        Effect.sync(() => {
          const id = nextId++
          hooks.set(id, { onReply: options.onReply, onBell: options.onBell, onTitle: options.onTitle })
          post({ _tag: "Open", id, cols: options.cols, rows: options.rows, scrollback: options.scrollback })
          return id
        }),
        (id) =>
          Effect.sync(() => {
            hooks.delete(id)
            if (worker !== undefined) post({ _tag: "Close", id })
          })
      ).pipe(
        Effect.map((id): ScreenModel.ScreenModel => ({
          feed: (data) => post({ _tag: "Feed", id, data }),
          write: (data) =>
            call(
              (request) => ({ _tag: "Write", id, request, data }),
              () => undefined
            ),
          resize: (cols, rows) =>
            call(
              (request) => ({ _tag: "Resize", id, request, cols, rows }),
              () => undefined
            ),
          snapshot: (snapshotOptions) =>
            call(
              (request) => ({
                _tag: "Snapshot",
                id,
                request,
                scrollbackLines: snapshotOptions?.scrollbackLines
              }),
              (answer) => {
                if (answer._tag !== "Snapshot") throw new Error(`a snapshot was answered with ${answer._tag}`)
                return answer.snapshot
              }
            )
        }))
      )

    return { make }
  })
)
