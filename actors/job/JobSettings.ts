/**
 * Node-wide settings of jobs.
 */
import * as os from "node:os"
import { Context, Duration, Effect, Layer } from "effect"
import * as ChildEnv from "../../infra/sandbox/ChildEnv.js"

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
    /** A node whose heartbeat is younger than this is alive. */
    readonly liveWithin: Duration.Duration
    readonly sshKnownHosts: string
    readonly sshKeepalive: Duration.Duration
    /** The argv prefix local programs start through (the sandbox's), empty for none. */
    readonly wrapper: ReadonlyArray<string>
    /**
     * Variables that point the job's agents at this node's AI-provider proxy with the job's own
     * token (over `env`, under the spec's own variables); the token works until `proxyEnded`.
     */
    readonly proxyEnv: (jobId: string) => Effect.Effect<Record<string, string>>
    /** The job's attempt has ended: its proxy token stops working. */
    readonly proxyEnded: (jobId: string) => Effect.Effect<void>
    /** The server's secrets: replaced by `[redacted]` in a job's output before it is recorded. */
    readonly secrets: ChildEnv.Secrets
  }
>() {}

/** Options of `layer`. */
export interface Options {
  readonly nodeId: string
  readonly dataDir: string
  readonly killGrace: Duration.Duration
  readonly sshKnownHosts: string
  /** A node whose heartbeat is younger than this is alive (default 6 s). */
  readonly liveWithin?: Duration.Duration
  readonly sshKeepalive: Duration.Duration
  readonly home?: string
  readonly env?: Readonly<Record<string, string>>
  readonly wrapper?: ReadonlyArray<string>
  readonly proxyEnv?: (jobId: string) => Effect.Effect<Record<string, string>>
  readonly proxyEnded?: (jobId: string) => Effect.Effect<void>
  readonly secrets?: ChildEnv.Secrets
}

/** The settings of this node. */
export const layer = (options: Options) => {
  const secrets = options.secrets ?? ChildEnv.secrets({ values: [] })
  return Layer.succeed(
    JobSettings,
    JobSettings.of({
      home: os.homedir(),
      env: ChildEnv.childEnv(secrets),
      wrapper: [],
      proxyEnv: () => Effect.succeed({}),
      proxyEnded: () => Effect.void,
      ...options,
      secrets,
      shutdownGrace: Duration.min(options.killGrace, Duration.seconds(2)),
      liveWithin: options.liveWithin ?? Duration.seconds(6)
    })
  )
}
