package org.autoglm.engine;

import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertTrue;
import static org.junit.Assert.fail;

import java.io.File;
import org.junit.Test;

public class BundleManifestTest {
  @Test
  public void readsTheExportedBundle() {
    BundleManifest m = BundleManifest.read(GoldenTrace.bundle());
    assertEquals("executorch", m.target);
    assertEquals(m.specialToken("<|image|>"), m.imageTokenId);
    assertTrue(m.maxSeqLen >= 2 && m.maxSeqLen <= m.maxContext);
    assertEquals(m.image.numTokens(), m.image.numPatches() / 4);
    assertEquals("[gMASK]<sop>", m.chatTemplate.prefix);
    assertEquals(3, m.method(ExecuTorchProgramEngine.TEXT_DECODER).inputs.size());
  }

  @Test
  public void exportedFilesAreAllThere() {
    BundleManifest.read(GoldenTrace.bundle()).checkFiles();
  }

  @Test
  public void aTruncatedFileIsNamed() throws Exception {
    File dir = java.nio.file.Files.createTempDirectory("bundle").toFile();
    BundleManifest m = BundleManifest.read(GoldenTrace.bundle());
    for (String name : m.files.keySet()) {
      java.nio.file.Files.copy(m.file(name).toPath(), new File(dir, name).toPath());
    }
    java.nio.file.Files.copy(m.file("manifest.json").toPath(), new File(dir, "manifest.json").toPath());
    try (java.io.RandomAccessFile f = new java.io.RandomAccessFile(new File(dir, "tokenizer.json"), "rw")) {
      f.setLength(f.length() - 1);
    }
    try {
      BundleManifest.read(dir).checkFiles();
      fail();
    } catch (EngineException e) {
      assertTrue(e.getMessage(), e.getMessage().contains("tokenizer.json") && e.getMessage().contains("truncated"));
    }
  }

  @Test
  public void missingBundleIsOneLine() {
    try {
      BundleManifest.read(new File("/no/such/bundle"));
      fail();
    } catch (EngineException e) {
      assertTrue(e.getMessage(), e.getMessage().contains("manifest.json: missing"));
    }
  }

  @Test
  public void newerSchemaIsRefused() {
    try {
      BundleManifest.parse(new File("b"), "{\"schema_version\": 99}");
      fail();
    } catch (EngineException e) {
      assertTrue(e.getMessage(), e.getMessage().contains("newer than this app reads"));
    }
  }

  @Test
  public void missingKeysAreNamed() {
    try {
      BundleManifest.parse(new File("b"), "{\"schema_version\": 1, \"target\": \"executorch\"}");
      fail();
    } catch (EngineException e) {
      assertTrue(e.getMessage(), e.getMessage().contains("'runtime'"));
    }
  }

  @Test
  public void aCoreMlBundleIsNotAnExecuTorchOne() {
    BundleManifest m = BundleManifest.read(GoldenTrace.bundle());
    try {
      new ExecuTorchProgramEngine((method, inputs) -> new Tensor[0],
          BundleManifest.parse(m.root, readManifest(m).replace("\"executorch\"", "\"coreml\"")));
      fail();
    } catch (EngineException e) {
      assertTrue(e.getMessage(), e.getMessage().contains("not an ExecuTorch one"));
    }
  }

  private static String readManifest(BundleManifest m) {
    try {
      return new String(java.nio.file.Files.readAllBytes(m.file("manifest.json").toPath()), "UTF-8");
    } catch (java.io.IOException e) {
      throw new AssertionError(e);
    }
  }
}
