import Darwin
import Foundation

/// The process's physical footprint (what iOS counts against the app's memory limit).
enum MemoryUsage {
    static func describe() -> String {
        var info = task_vm_info_data_t()
        var count = mach_msg_type_number_t(MemoryLayout<task_vm_info_data_t>.size / MemoryLayout<natural_t>.size)
        let kr = withUnsafeMutablePointer(to: &info) {
            $0.withMemoryRebound(to: integer_t.self, capacity: Int(count)) {
                task_info(mach_task_self_, task_flavor_t(TASK_VM_INFO), $0, &count)
            }
        }
        guard kr == KERN_SUCCESS else { return "memory: unavailable" }
        return String(format: "memory: footprint %.0f MB", Double(info.phys_footprint) / 1_048_576)
    }
}
