import * as MemoryEventLog from "../../../infra/eventlog/MemoryEventLog.js"
import { eventLogContract } from "./contract.js"

eventLogContract("memory event log", MemoryEventLog.layer, () => MemoryEventLog.layer)
