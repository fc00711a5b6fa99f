/**
 * The screen models of a node's sessions, in a worker thread (`ScreenWorkers`): parsing terminal
 * output off the thread that moves the bytes. Each model is a `ScreenModel`, driven by messages
 * applied in the order they arrive; the answers to the programs' queries, bells and titles go back
 * as messages.
 */
import { parentPort } from "node:worker_threads"
import { Effect, Exit, Scope } from "effect"
import * as ScreenModel from "./ScreenModel.js"
import type { FromWorker, ToWorker, ToWorkerBatch } from "./ScreenWorkerProtocol.js"

const port = parentPort
if (port === null) throw new Error("ScreenWorker runs in a worker thread")

const post = (message: FromWorker) => port.postMessage(message)

const models = new Map<
  number,
  { readonly model: ScreenModel.ScreenModel; readonly scope: Scope.CloseableScope }
>()

/** Runs `effect` and answers request `request` with its result (or the defect's message). */
const answer = <A>(request: number, effect: Effect.Effect<A>, result: (value: A) => FromWorker) => {
  Effect.runFork(
    Effect.matchCause(effect, {
      onSuccess: (value) => post(result(value)),
      onFailure: (cause) => post({ _tag: "Failed", request, message: String(cause) })
    })
  )
}

const handle = (message: ToWorker) => {
  switch (message._tag) {
    case "Open": {
      const { id } = message
      const scope = Effect.runSync(Scope.make())
      const model = Effect.runSync(
        ScreenModel.make({
          cols: message.cols,
          rows: message.rows,
          scrollback: message.scrollback,
          onReply: (reply) => post({ _tag: "Reply", id, reply }),
          onBell: () => post({ _tag: "Bell", id }),
          onTitle: (title) => post({ _tag: "Title", id, title })
        }).pipe(Scope.extend(scope))
      )
      models.set(id, { model, scope })
      return
    }
    case "Close": {
      const entry = models.get(message.id)
      models.delete(message.id)
      if (entry !== undefined) Effect.runSync(Scope.close(entry.scope, Exit.void))
      return
    }
    default: {
      const entry = models.get(message.id)
      if (entry === undefined) {
        if (message._tag !== "Feed") {
          post({ _tag: "Failed", request: message.request, message: `no screen model ${message.id}` })
        }
        return
      }
      const { model } = entry
      switch (message._tag) {
        case "Feed":
          return model.feed(message.data)
        case "Write":
          return answer(message.request, model.write(message.data), () => ({
            _tag: "Done",
            request: message.request
          }))
        case "Resize":
          return answer(message.request, model.resize(message.cols, message.rows), () => ({
            _tag: "Done",
            request: message.request
          }))
        case "Snapshot":
          return answer(
            message.request,
            model.snapshot({ scrollbackLines: message.scrollbackLines }),
            (snapshot) => ({ _tag: "Snapshot", request: message.request, snapshot })
          )
      }
    }
  }
}

port.on("message", (batch: ToWorkerBatch) => {
  for (const message of batch.messages) handle(message)
})
