package org.autoglm.demo;

import java.io.File;
import org.autoglm.engine.BundleManifest;
import org.autoglm.engine.ExecuTorchProgramEngine;
import org.autoglm.engine.Generator;
import org.autoglm.engine.ModelNames;
import org.autoglm.engine.Vocabulary;

/** A loaded dist/android bundle: manifest, ExecuTorch program, tokenizer, generator. */
final class BundleSession {
  final BundleManifest manifest;
  final Generator generator;
  final long loadMs;
  private final ExecuTorchMethodRunner runner;

  private BundleSession(BundleManifest manifest, ExecuTorchMethodRunner runner, Generator generator, long loadMs) {
    this.manifest = manifest;
    this.runner = runner;
    this.generator = generator;
    this.loadMs = loadMs;
  }

  static BundleSession load(File dir) {
    long t0 = System.nanoTime();
    BundleManifest manifest = BundleManifest.read(dir);
    manifest.checkFiles();
    ExecuTorchMethodRunner runner = new ExecuTorchMethodRunner(manifest.file(manifest.program).getAbsolutePath());
    ExecuTorchProgramEngine engine = new ExecuTorchProgramEngine(runner, manifest);
    // Load the methods the engine calls now: the first request then measures inference, not loading.
    for (String m : ModelNames.METHODS_CALLED) {
      if (manifest.methods.containsKey(m)) {
        runner.preload(m);
      }
    }
    DjlTokenizer tokenizer = new DjlTokenizer(manifest.file(BundleManifest.TOKENIZER));
    Vocabulary vocab = Vocabulary.read(manifest.file(BundleManifest.TOKENIZER));
    Generator generator = new Generator(manifest, engine, tokenizer, vocab);
    return new BundleSession(manifest, runner, generator, (System.nanoTime() - t0) / 1_000_000);
  }

  void close() {
    runner.close();
  }
}
