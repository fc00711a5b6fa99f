/**
 * Who this node is: its id, version, start time and where its database lives.
 */
import * as crypto from "node:crypto"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { Context, DateTime, Effect, Option } from "effect"
import type { DatabaseKind } from "../../rpc/System.js"

/** The identity of the running node. */
export class NodeInfo extends Context.Tag("vibes/NodeInfo")<
  NodeInfo,
  {
    readonly nodeId: string
    readonly version: string
    readonly startedAt: DateTime.Utc
    readonly database: DatabaseKind
  }
>() {}

/** `VIBES_NODE_ID` when set, else the id kept in `<dataDir>/node-id` (made at first start). */
export const resolveNodeId = (configured: Option.Option<string>, dataDir: string): Effect.Effect<string> =>
  Option.match(configured, {
    onSome: Effect.succeed,
    onNone: () =>
      Effect.sync(() => {
        const file = path.join(dataDir, "node-id")
        try {
          const existing = fs.readFileSync(file, "utf8").trim()
          if (existing !== "") return existing
        } catch {
          // first start: make one below
        }
        const host =
          os
            .hostname()
            .toLowerCase()
            .replace(/[^a-z0-9-]+/g, "-")
            .slice(0, 40) || "node"
        const id = `${host}-${crypto.randomBytes(3).toString("hex")}`
        fs.writeFileSync(file, id + "\n", { mode: 0o600 })
        return id
      })
  })
