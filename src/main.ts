/**
 * Entry point of the `vibes` executable.
 */
import { Cause, Effect, Exit } from "effect"
import * as NodeContext from "@effect/platform-node/NodeContext"
import * as NodeRuntime from "@effect/platform-node/NodeRuntime"
import * as ValidationError from "@effect/cli/ValidationError"
import * as Cli from "./cli/Cli.js"
import { printable } from "./cli/Display.js"

const program = Cli.run(process.argv).pipe(
  Effect.catchAll((error) =>
    Effect.sync(() => {
      if (ValidationError.isValidationError(error)) {
        // @effect/cli has printed the problem (and the help) already.
        process.exitCode = 2
      } else {
        // A message may quote what the server sent: shown, not obeyed.
        console.error(`vibes: ${printable(error.message)}`)
        process.exitCode = error.exitCode
      }
    })
  ),
  Effect.provide(NodeContext.layer)
)

NodeRuntime.runMain(program, {
  disablePrettyLogger: true,
  teardown: (exit, onExit) =>
    onExit(Exit.isFailure(exit) && !Cause.isInterruptedOnly(exit.cause) ? 1 : Number(process.exitCode ?? 0))
})
