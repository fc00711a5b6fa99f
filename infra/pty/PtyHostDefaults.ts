/**
 * The PTY host's defaults, apart from its server so the CLI can show them without loading it.
 */
import { Duration } from "effect"

/** Default size of a PTY's output ring. */
export const defaultRingBytes = 8 * 1024 * 1024

/** Default idle time before the host exits by itself. */
export const defaultIdleExit: Duration.Duration = Duration.seconds(30)
