package org.autoglm.engine;

import com.google.gson.JsonArray;
import com.google.gson.JsonElement;
import com.google.gson.JsonObject;
import com.google.gson.JsonParser;
import java.io.File;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.util.ArrayList;
import java.util.List;

/** A trace written by `autoglm-export trace` (runtime/autoglm_runtime/trace.py), read for replay. */
final class GoldenTrace {
  final File file;
  final JsonObject json;

  GoldenTrace(File file, JsonObject json) {
    this.file = file;
    this.json = json;
  }

  static GoldenTrace read(File f) throws IOException {
    String text = new String(Files.readAllBytes(f.toPath()), StandardCharsets.UTF_8);
    return new GoldenTrace(f, JsonParser.parseString(text).getAsJsonObject());
  }

  /** Every *.json trace in the folder named by -Dautoglm.traces, sorted by name. */
  static List<File> all() {
    String dir = System.getProperty("autoglm.traces");
    if (dir == null) {
      throw new IllegalStateException("run with -Dautoglm.traces=DIR (make demo-test does)");
    }
    File[] files = new File(dir).listFiles((d, n) -> n.endsWith(".json"));
    if (files == null || files.length == 0) {
      throw new IllegalStateException("no traces in " + dir);
    }
    java.util.Arrays.sort(files);
    List<File> out = new ArrayList<>();
    for (File f : files) {
      out.add(f);
    }
    return out;
  }

  static File bundle() {
    String dir = System.getProperty("autoglm.bundle");
    if (dir == null) {
      throw new IllegalStateException("run with -Dautoglm.bundle=DIR (make demo-test does)");
    }
    return new File(dir);
  }

  JsonObject request() {
    return json.getAsJsonObject("request");
  }

  JsonObject prompt() {
    return json.getAsJsonObject("prompt");
  }

  JsonArray calls() {
    return json.getAsJsonArray("calls");
  }

  JsonArray steps() {
    return json.getAsJsonArray("steps");
  }

  /** The request's input file (image or audio), stored next to the trace under inputs/. */
  File input(String kind) {
    JsonElement e = request().get(kind);
    if (e == null || e.isJsonNull()) {
      return null;
    }
    return new File(new File(file.getParentFile(), "inputs"), e.getAsJsonObject().get("file").getAsString());
  }

  static long[] longs(JsonArray a) {
    long[] out = new long[a.size()];
    for (int i = 0; i < out.length; i++) {
      out[i] = a.get(i).getAsLong();
    }
    return out;
  }

  static int[] ints(JsonArray a) {
    int[] out = new int[a.size()];
    for (int i = 0; i < out.length; i++) {
      out[i] = a.get(i).getAsInt();
    }
    return out;
  }
}
