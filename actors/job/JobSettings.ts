/**
 * Node-wide settings of jobs.
 */
import * as os from "node:os"
import { Context, Duration, Layer } from "effect"
import { sessionEnv } from "../session/SessionSettings.js"

/** Settings every job entity of this node shares. */
export class JobSettings extends Context.Tag("vibes/JobSettings")<
  JobSettings,
  {
    readonly nodeId: string
    readonly dataDir: string
    /** Working directory of a local job that names none. */
    readonly home: string
    /** Environment every local job starts from (its spec's env is added on top). */
    readonly env: Readonly<Record<string, string>>
    /** SIGTERM to SIGKILL. */
    readonly killGrace: Duration.Duration
    /** SIGTERM to SIGKILL when the node shuts down (it has little time). */
    readonly shutdownGrace: Duration.Duration
    readonly sshKnownHosts: string
    readonly sshKeepalive: Duration.Duration
  }
>() {}

/** Options of `layer`. */
export interface Options {
  readonly nodeId: string
  readonly dataDir: string
  readonly killGrace: Duration.Duration
  readonly sshKnownHosts: string
  readonly sshKeepalive: Duration.Duration
}

/** The settings of this node. */
export const layer = (options: Options) =>
  Layer.succeed(
    JobSettings,
    JobSettings.of({
      ...options,
      home: os.homedir(),
      env: sessionEnv(),
      shutdownGrace: Duration.min(options.killGrace, Duration.seconds(2))
    })
  )
