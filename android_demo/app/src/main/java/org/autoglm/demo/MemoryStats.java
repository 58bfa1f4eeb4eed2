package org.autoglm.demo;

import android.os.Debug;

/** The process's memory as the app shows it: total PSS and the native heap (where ExecuTorch allocates). */
final class MemoryStats {
  private MemoryStats() {}

  static String describe() {
    Debug.MemoryInfo info = new Debug.MemoryInfo();
    Debug.getMemoryInfo(info);
    long pssMb = info.getTotalPss() / 1024;
    long nativeMb = Debug.getNativeHeapAllocatedSize() / (1024 * 1024);
    return "memory: PSS " + pssMb + " MB, native heap " + nativeMb + " MB";
  }
}
