/**
 * Messages between a node and its screen worker (`ScreenWorker`, `ScreenWorkers`). Both ends are
 * the same program, so they are plain structured-clone values, not schemas.
 */
import type { Snapshot } from "./ScreenModel.js"

/** What the node asks of the worker. Messages of one model apply in the order they are sent. */
export type ToWorker =
  | {
      readonly _tag: "Open"
      readonly id: number
      readonly cols: number
      readonly rows: number
      readonly scrollback: number
    }
  | { readonly _tag: "Feed"; readonly id: number; readonly data: Uint8Array }
  | { readonly _tag: "Write"; readonly id: number; readonly request: number; readonly data: Uint8Array }
  | {
      readonly _tag: "Resize"
      readonly id: number
      readonly request: number
      readonly cols: number
      readonly rows: number
    }
  | {
      readonly _tag: "Snapshot"
      readonly id: number
      readonly request: number
      readonly scrollbackLines: number | undefined
    }
  | { readonly _tag: "Close"; readonly id: number }

/**
 * What crosses to the worker: the messages of one turn of the node's event loop, in order, their
 * bytes views of one buffer that is handed over (not cloned) with them.
 */
export interface ToWorkerBatch {
  readonly messages: ReadonlyArray<ToWorker>
}

/** What the worker tells the node. */
export type FromWorker =
  | { readonly _tag: "Done"; readonly request: number }
  | { readonly _tag: "Snapshot"; readonly request: number; readonly snapshot: Snapshot }
  | { readonly _tag: "Failed"; readonly request: number; readonly message: string }
  | { readonly _tag: "Reply"; readonly id: number; readonly reply: string }
  | { readonly _tag: "Bell"; readonly id: number }
  | { readonly _tag: "Title"; readonly id: number; readonly title: string }
