export { DatasetLog, logName, syncStore } from './log.ts'
export { CaptureLoop, type CaptureLoopOptions, type CaptureStats } from './capture-loop.ts'
export { ApplyLoop, type ApplyLoopOptions, type ApplyStats } from './apply-loop.ts'
