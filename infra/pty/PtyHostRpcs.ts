/**
 * The control protocol of the PTY host: the `PtyHost` service's calls other than output and input
 * as an `@effect/rpc` group, plus `Ping` and `Shutdown` for whoever supervises the host. Spoken
 * with msgpack over `<dataDir>/pty-host.sock`. Terminal bytes travel on the data socket beside it
 * (`PtyDataProtocol`). Also where a host is found: its socket and pid file.
 */
import * as fs from "node:fs"
import * as path from "node:path"
import { Layer, Option, Schema } from "effect"
import * as Rpc from "@effect/rpc/Rpc"
import * as RpcGroup from "@effect/rpc/RpcGroup"
import * as RpcSerialization from "@effect/rpc/RpcSerialization"
import {
  PtyAlreadyExists,
  PtyId,
  PtyInfo,
  PtyNotFound,
  PtyNotRunning,
  PtySignal,
  PtySpawnFailed,
  PtySpec
} from "./PtyHost.js"
import * as Proc from "../proc/Proc.js"

/** Name of the host's Unix socket in the data dir. */
export const socketFileName = "pty-host.sock"

/** Name of the file in the data dir where a running host writes its pid. */
export const pidFileName = "pty-host.json"

/** The host's socket in `dataDir`. */
export const socketPath = (dataDir: string): string => path.join(dataDir, socketFileName)

/** The host's pid file in `dataDir`. */
export const pidFilePath = (dataDir: string): string => path.join(dataDir, pidFileName)

/** The content of `pty-host.json`. */
export const PidFile = Schema.Struct({ pid: Schema.Int, startedAt: Schema.String })

/** Whether `pid` runs (exists and is not a zombie). */
export const isRunning = Proc.isRunning

/** The pid in `pty-host.json` when it names a running `vibes pty-host` process. */
export const runningHostPid = (dataDir: string): Option.Option<number> => {
  try {
    const file = Schema.decodeUnknownOption(Schema.parseJson(PidFile))(
      fs.readFileSync(pidFilePath(dataDir), "utf8")
    )
    return Option.filter(
      Option.map(file, ({ pid }) => pid),
      (pid) => isRunning(pid) && Option.exists(Proc.cmdline(pid), (line) => line.includes("pty-host"))
    )
  } catch {
    return Option.none()
  }
}

/** What `Ping` answers. */
export class PingResult extends Schema.Class<PingResult>("PingResult")({
  pid: Schema.Int,
  startedAt: Schema.DateTimeUtc,
  /** PTYs held, running or exited and not yet released. */
  ptys: Schema.NonNegativeInt
}) {}

/** Every RPC the PTY host answers. */
export class PtyHostRpcs extends RpcGroup.make(
  Rpc.make("Spawn", {
    payload: PtySpec,
    success: PtyInfo,
    error: Schema.Union(PtySpawnFailed, PtyAlreadyExists)
  }),
  Rpc.make("Resize", {
    payload: { id: PtyId, cols: Schema.Int, rows: Schema.Int },
    error: Schema.Union(PtyNotFound, PtyNotRunning)
  }),
  Rpc.make("Signal", {
    payload: { id: PtyId, signal: PtySignal },
    error: Schema.Union(PtyNotFound, PtyNotRunning)
  }),
  Rpc.make("Get", { payload: { id: PtyId }, success: PtyInfo, error: PtyNotFound }),
  Rpc.make("List", { success: Schema.Array(PtyInfo) }),
  Rpc.make("Release", { payload: { id: PtyId } }),
  Rpc.make("Ping", { success: PingResult }),
  Rpc.make("Shutdown")
) {}

/** The serialization both ends use. */
export const layerSerialization: Layer.Layer<RpcSerialization.RpcSerialization> =
  RpcSerialization.layerMsgPack
