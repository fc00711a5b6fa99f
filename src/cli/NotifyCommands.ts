/**
 * Notification commands of the CLI: outbound webhook endpoints (`vibes notify endpoint
 * add|ls|rm|test`), their delivery log (`vibes notify deliveries`, `vibes notify redeliver ID`), and
 * inbound hooks (`vibes notify hook add|ls|rm`).
 */
import { DateTime, Effect, Option, Redacted, Schema } from "effect"
import * as Args from "@effect/cli/Args"
import * as Command from "@effect/cli/Command"
import * as Options from "@effect/cli/Options"
import { Severity } from "../../rpc/Events.js"
import { JobSpec } from "../../rpc/Jobs.js"
import {
  AddEndpoint,
  AddHook,
  DeliveriesRequest,
  DeliveryInfo,
  DeliveryStatus,
  EndpointFormat,
  EndpointInfo,
  type HookAction,
  HookInfo,
  HookVerification
} from "../../rpc/Notify.js"
import { SessionId } from "../../rpc/Sessions.js"
import { CliFailure, connectionOptions, resolveConnection, withClient } from "./Connection.js"
import { json as toJson, printable } from "./Display.js"
import { formatTable } from "./SessionCommands.js"

const json = Options.boolean("json").pipe(Options.withDescription("Print JSON"))

const encodeEndpoint = Schema.encodeSync(EndpointInfo)
const encodeDelivery = Schema.encodeSync(DeliveryInfo)
const encodeHook = Schema.encodeSync(HookInfo)

const usage = (message: string) => new CliFailure({ message, exitCode: 2 })

/** Decodes a request built from flags; a refusal is a usage error naming what is wrong. */
const decode = <A, I>(schema: Schema.Schema<A, I>, input: I) =>
  Schema.decode(schema)(input).pipe(
    Effect.mapError((error) => usage(`invalid request: ${String(error.message).replace(/\s+/g, " ")}`))
  )

const time = (at: DateTime.Utc) => DateTime.formatIso(at).slice(0, 19).replace("T", " ")

const secretOption = Options.redacted("secret").pipe(
  Options.withDescription("The signing secret; one is made (and printed once) when omitted"),
  Options.optional
)

const endpointAdd = Command.make(
  "add",
  {
    ...connectionOptions,
    format: Options.choice("format", EndpointFormat.literals).pipe(
      Options.withDescription("The body: vibes JSON, or a Slack or Discord incoming-webhook message"),
      Options.withDefault("vibes" as const)
    ),
    secret: secretOption,
    types: Options.text("type").pipe(
      Options.withDescription(
        "An event type glob to send (repeatable; e.g. 'job.*'). Default: sessions waiting for input, sessions lost, jobs ended, the proxy's circuit opening"
      ),
      Options.repeated
    ),
    session: Options.text("session").pipe(
      Options.withDescription("Only events of this session"),
      Options.optional
    ),
    job: Options.text("job").pipe(Options.withDescription("Only events of this job"), Options.optional),
    minSeverity: Options.choice("min-severity", Severity.literals).pipe(
      Options.withDescription("Only events at least this severe"),
      Options.withDefault("info" as const)
    ),
    maxAttempts: Options.integer("max-attempts").pipe(
      Options.withDescription("Attempts before a delivery is dead-lettered"),
      Options.withDefault(12)
    ),
    rate: Options.integer("rate").pipe(
      Options.withDescription("Deliveries a minute at most"),
      Options.withDefault(120)
    ),
    coalesce: Options.integer("coalesce-ms").pipe(
      Options.withDescription("Sessions going idle within this many ms make one message (0: off)"),
      Options.withDefault(1000)
    ),
    json,
    name: Args.text({ name: "name" }).pipe(Args.withDescription("The endpoint's name")),
    target: Args.text({ name: "url" }).pipe(
      Args.withDescription("Where deliveries are posted (http or https)")
    )
  },
  (flags) =>
    Effect.gen(function* () {
      const request = yield* decode(AddEndpoint, {
        name: flags.name,
        url: flags.target,
        format: flags.format,
        ...(Option.isSome(flags.secret) ? { secret: Redacted.value(flags.secret.value) } : {}),
        types: flags.types,
        ...(Option.isSome(flags.session) ? { sessionId: flags.session.value } : {}),
        ...(Option.isSome(flags.job) ? { jobId: flags.job.value } : {}),
        minSeverity: flags.minSeverity,
        maxAttempts: flags.maxAttempts,
        ratePerMinute: flags.rate,
        coalesceMillis: flags.coalesce
      })
      const connection = yield* resolveConnection(flags)
      const added = yield* withClient(connection, flags.timeout, (client) =>
        client.Notify.AddEndpoint(request)
      )
      const secret = Redacted.value(added.secret)
      if (flags.json) console.log(toJson({ endpoint: encodeEndpoint(added.endpoint), secret }))
      else
        console.log(
          `endpoint ${printable(added.endpoint.name)} added; its signing secret (shown this once): ${printable(secret)}`
        )
    })
).pipe(
  Command.withDescription(
    "Add a webhook endpoint: `vibes notify endpoint add NAME URL [--format slack] [--type 'job.*']...`. Deliveries are signed Standard Webhooks style (webhook-id, webhook-timestamp, webhook-signature)."
  )
)

const endpointLs = Command.make("ls", { ...connectionOptions, json }, (flags) =>
  Effect.gen(function* () {
    const connection = yield* resolveConnection(flags)
    const endpoints = yield* withClient(connection, flags.timeout, (client) => client.Notify.ListEndpoints())
    if (flags.json) {
      for (const endpoint of endpoints) console.log(toJson(encodeEndpoint(endpoint)))
      return
    }
    if (endpoints.length === 0) {
      console.log("no endpoints")
      return
    }
    const rows = endpoints.map((endpoint) => [
      printable(endpoint.name),
      endpoint.format,
      printable(endpoint.types.length > 0 ? endpoint.types.join(",") : "(defaults)"),
      endpoint.committed === null ? "-" : String(endpoint.committed),
      printable(endpoint.target)
    ])
    for (const line of formatTable(["NAME", "FORMAT", "TYPES", "OFFSET", "TARGET"], rows)) console.log(line)
  })
).pipe(Command.withDescription("List the webhook endpoints (never their secrets or URL paths)."))

const byName = (what: string) => Args.text({ name: "name" }).pipe(Args.withDescription(`The ${what}'s name`))

const endpointRm = Command.make("rm", { ...connectionOptions, name: byName("endpoint") }, (flags) =>
  Effect.gen(function* () {
    const connection = yield* resolveConnection(flags)
    yield* withClient(connection, flags.timeout, (client) =>
      client.Notify.RemoveEndpoint({ name: flags.name })
    )
  })
).pipe(Command.withDescription("Remove a webhook endpoint and its delivery log."))

const printDelivery = (delivery: DeliveryInfo) =>
  `${delivery.id} ${delivery.status} after ${delivery.attempts} attempt(s)` +
  (delivery.lastStatus !== null ? `, HTTP ${delivery.lastStatus}` : "") +
  (delivery.lastLatencyMillis !== null ? ` in ${Math.round(delivery.lastLatencyMillis)} ms` : "") +
  (delivery.lastError !== null ? ` (${printable(delivery.lastError)})` : "")

const endpointTest = Command.make("test", { ...connectionOptions, json, name: byName("endpoint") }, (flags) =>
  Effect.gen(function* () {
    const connection = yield* resolveConnection(flags)
    const delivery = yield* withClient(connection, flags.timeout, (client) =>
      client.Notify.TestEndpoint({ name: flags.name })
    )
    console.log(flags.json ? toJson(encodeDelivery(delivery)) : printDelivery(delivery))
    if (delivery.status !== "delivered") {
      return yield* new CliFailure({ message: `the test message was not accepted`, exitCode: 1 })
    }
  })
).pipe(
  Command.withDescription("Send a signed test message to an endpoint now; exit 1 when it is not accepted.")
)

const endpoint = Command.make("endpoint").pipe(
  Command.withDescription("Outbound webhook endpoints: `vibes notify endpoint add|ls|rm|test`."),
  Command.withSubcommands([endpointAdd, endpointLs, endpointRm, endpointTest])
)

const deliveries = Command.make(
  "deliveries",
  {
    ...connectionOptions,
    json,
    endpoint: Options.text("endpoint").pipe(
      Options.withDescription("Only this endpoint's"),
      Options.optional
    ),
    status: Options.choice("status", DeliveryStatus.literals).pipe(
      Options.withDescription("Only deliveries in this state (dead: the dead letters)"),
      Options.optional
    ),
    limit: Options.integer("limit").pipe(
      Options.withDescription("At most this many"),
      Options.withDefault(50)
    )
  },
  (flags) =>
    Effect.gen(function* () {
      const request = yield* decode(DeliveriesRequest, {
        ...(Option.isSome(flags.endpoint) ? { endpoint: flags.endpoint.value } : {}),
        ...(Option.isSome(flags.status) ? { status: flags.status.value } : {}),
        limit: flags.limit
      })
      const connection = yield* resolveConnection(flags)
      const rows = yield* withClient(connection, flags.timeout, (client) => client.Notify.Deliveries(request))
      if (flags.json) {
        for (const row of rows) console.log(toJson(encodeDelivery(row)))
        return
      }
      if (rows.length === 0) {
        console.log("no deliveries")
        return
      }
      const table = rows.map((row) => [
        row.id,
        printable(row.endpoint),
        row.status,
        String(row.attempts),
        row.lastStatus === null ? "-" : String(row.lastStatus),
        row.lastLatencyMillis === null ? "-" : `${Math.round(row.lastLatencyMillis)}ms`,
        time(row.updatedAt),
        printable(row.types.join(","))
      ])
      for (const line of formatTable(
        ["ID", "ENDPOINT", "STATUS", "ATTEMPTS", "HTTP", "LATENCY", "UPDATED", "TYPES"],
        table
      ))
        console.log(line)
    })
).pipe(
  Command.withDescription("The delivery log, newest first: status, attempts, the last answer and latency.")
)

const redeliver = Command.make(
  "redeliver",
  {
    ...connectionOptions,
    json,
    id: Args.text({ name: "id" }).pipe(Args.withDescription("The delivery's id"))
  },
  (flags) =>
    Effect.gen(function* () {
      const id = yield* decode(Schema.UUID, flags.id)
      const connection = yield* resolveConnection(flags)
      const delivery = yield* withClient(connection, flags.timeout, (client) =>
        client.Notify.Redeliver({ id })
      )
      console.log(flags.json ? toJson(encodeDelivery(delivery)) : printDelivery(delivery))
      if (delivery.status !== "delivered")
        return yield* new CliFailure({ message: "the delivery was not accepted", exitCode: 1 })
    })
).pipe(Command.withDescription("Send a logged delivery (a dead letter) again now, with its webhook id."))

const hookAdd = Command.make(
  "add",
  {
    ...connectionOptions,
    json,
    verify: Options.choice("verify", HookVerification.literals).pipe(
      Options.withDescription(
        "How requests are verified: github (X-Hub-Signature-256), slack (signing secret), hmac (Standard Webhooks headers)"
      )
    ),
    secret: Options.redacted("secret").pipe(
      Options.withDescription(
        "GitHub's webhook secret, Slack's signing secret, or whsec_…; made when omitted (not for Slack)"
      ),
      Options.optional
    ),
    run: Options.text("run").pipe(
      Options.withDescription("Action: run this shell line as a job (with VIBES_HOOK_* variables)"),
      Options.optional
    ),
    cwd: Options.text("cwd").pipe(
      Options.withDescription("With --run: the job's directory"),
      Options.optional
    ),
    workspace: Options.text("workspace").pipe(
      Options.withDescription("With --run or --create-session: a workspace to work in"),
      Options.optional
    ),
    sendTo: Options.text("send-to").pipe(
      Options.withDescription("Action: type the request's `text` into this session"),
      Options.optional
    ),
    slackCommand: Options.boolean("slack-command").pipe(
      Options.withDescription(
        "Action (with --verify slack): answer `/vibes run <line>` (a job, its result posted back to the channel when it ends) and `/vibes ls`"
      )
    ),
    responseUrlPrefix: Options.text("response-url-prefix").pipe(
      Options.withDescription(
        "With --slack-command: where answers may go. Default: https://hooks.slack.com/"
      ),
      Options.optional
    ),
    createSession: Options.boolean("create-session").pipe(
      Options.withDescription("Action: start a session (its command: --command, default the shell)")
    ),
    command: Options.text("command").pipe(
      Options.withDescription("With --create-session: the program"),
      Options.optional
    ),
    rate: Options.integer("rate").pipe(
      Options.withDescription("Requests a minute from one address at most"),
      Options.withDefault(60)
    ),
    name: byName("hook")
  },
  (flags) =>
    Effect.gen(function* () {
      const chosen = [
        Option.isSome(flags.run),
        Option.isSome(flags.sendTo),
        flags.createSession,
        flags.slackCommand
      ].filter(Boolean)
      if (chosen.length !== 1)
        return yield* usage(
          "name exactly one action: --run LINE, --send-to SESSION, --create-session or --slack-command"
        )
      const workspace = Option.getOrUndefined(flags.workspace)
      const action: HookAction = flags.slackCommand
        ? {
            _tag: "SlackCommand",
            responseUrlPrefix: Option.getOrElse(flags.responseUrlPrefix, () => "https://hooks.slack.com/"),
            ...(Option.isSome(flags.cwd) ? { cwd: flags.cwd.value } : {}),
            ...(workspace !== undefined ? { workspace } : {})
          }
        : Option.isSome(flags.run)
          ? {
              _tag: "RunJob",
              spec: JobSpec.make({
                command: flags.run.value,
                shell: true,
                ...(Option.isSome(flags.cwd) ? { cwd: flags.cwd.value } : {}),
                ...(workspace !== undefined ? { workspace } : {})
              })
            }
          : Option.isSome(flags.sendTo)
            ? { _tag: "SendText", sessionId: yield* decode(SessionId, flags.sendTo.value) }
            : {
                _tag: "CreateSession",
                args: [],
                ...(Option.isSome(flags.command) ? { command: flags.command.value } : {}),
                ...(workspace !== undefined ? { workspace } : {})
              }
      const request = AddHook.make({
        name: yield* decode(Schema.String, flags.name),
        verify: flags.verify,
        ...(Option.isSome(flags.secret) ? { secret: flags.secret.value } : {}),
        action,
        ratePerMinute: flags.rate
      })
      const checked = yield* decode(AddHook, Schema.encodeSync(AddHook)(request))
      const connection = yield* resolveConnection(flags)
      const added = yield* withClient(connection, flags.timeout, (client) => client.Notify.AddHook(checked))
      const secret = Redacted.value(added.secret)
      if (flags.json) console.log(toJson({ hook: encodeHook(added.hook), secret }))
      else
        console.log(
          `hook ${printable(added.hook.name)} added at ${printable(added.hook.path)}; its secret (shown this once): ${printable(secret)}`
        )
    })
).pipe(
  Command.withDescription(
    "Add an inbound hook at POST /hooks/NAME: `vibes notify hook add ci --verify github --run 'npm test' --workspace app`."
  )
)

const hookLs = Command.make("ls", { ...connectionOptions, json }, (flags) =>
  Effect.gen(function* () {
    const connection = yield* resolveConnection(flags)
    const hooks = yield* withClient(connection, flags.timeout, (client) => client.Notify.ListHooks())
    if (flags.json) {
      for (const hook of hooks) console.log(toJson(encodeHook(hook)))
      return
    }
    if (hooks.length === 0) {
      console.log("no hooks")
      return
    }
    const rows = hooks.map((hook) => [
      printable(hook.name),
      hook.verify,
      hook.action._tag,
      printable(hook.path)
    ])
    for (const line of formatTable(["NAME", "VERIFY", "ACTION", "PATH"], rows)) console.log(line)
  })
).pipe(Command.withDescription("List the inbound hooks (never their secrets)."))

const hookRm = Command.make("rm", { ...connectionOptions, name: byName("hook") }, (flags) =>
  Effect.gen(function* () {
    const connection = yield* resolveConnection(flags)
    yield* withClient(connection, flags.timeout, (client) => client.Notify.RemoveHook({ name: flags.name }))
  })
).pipe(Command.withDescription("Remove an inbound hook: its path answers like any unknown one from then on."))

const hook = Command.make("hook").pipe(
  Command.withDescription("Inbound hooks (POST /hooks/NAME): `vibes notify hook add|ls|rm`."),
  Command.withSubcommands([hookAdd, hookLs, hookRm])
)

/** `vibes notify endpoint|deliveries|redeliver|hook`. */
export const command = Command.make("notify").pipe(
  Command.withDescription(
    "Notifications: signed outbound webhooks for the events that matter, their delivery log, and inbound hooks."
  ),
  Command.withSubcommands([endpoint, deliveries, redeliver, hook])
)
