package org.autoglm.engine;

import com.google.gson.JsonArray;
import com.google.gson.JsonElement;
import com.google.gson.JsonObject;
import com.google.gson.JsonParseException;
import com.google.gson.JsonParser;
import java.io.File;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.util.ArrayList;
import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * manifest.json of an autoglm-export bundle (runtime/autoglm_runtime/bundle.py): the runtime spec,
 * chat template, special tokens, and the ExecuTorch program's methods with their input names.
 */
public final class BundleManifest {
  public static final int SCHEMA_VERSION = 1;
  public static final String MANIFEST = "manifest.json";
  public static final String TOKENIZER = "tokenizer.json";

  /** One method of model.pte: its input and output names, in call order. */
  public static final class Method {
    public final String name;
    public final List<String> inputs;
    public final List<String> outputs;

    Method(String name, List<String> inputs, List<String> outputs) {
      this.name = name;
      this.inputs = Collections.unmodifiableList(inputs);
      this.outputs = Collections.unmodifiableList(outputs);
    }
  }

  public final File root;
  public final String target;
  public final String program;
  public final int maxContext;
  public final int maxSeqLen;
  public final int vocabSize;
  public final int hiddenSize;
  public final long[] eosTokenIds;
  public final int imageTokenId;
  public final ImageSpec image;
  /** -1 when the model has no audio tower. */
  public final int audioTokenId;
  public final int audioTokens;
  /** null when the model has no audio tower. */
  public final AudioSpec audio;
  public final ChatTemplate chatTemplate;
  public final Map<String, Integer> specialTokens;
  public final Map<String, Method> methods;
  /** Every file the export wrote, with its size in bytes (manifest "files"). */
  public final Map<String, Long> files;

  private BundleManifest(File root, JsonObject m) {
    this.root = root;
    int version = intAt(m, "schema_version");
    if (version > SCHEMA_VERSION) {
      throw new EngineException(
          where()
              + ": schema_version "
              + version
              + " is newer than this app reads ("
              + SCHEMA_VERSION
              + "); update the app");
    }
    target = stringAt(m, "target");
    JsonObject rt = objectAt(m, "runtime");
    maxContext = intAt(rt, "max_context");
    vocabSize = intAt(rt, "vocab_size");
    hiddenSize = intAt(rt, "hidden_size");
    eosTokenIds = longsAt(rt, "eos_token_ids");
    imageTokenId = intAt(rt, "image_token_id");
    image = imageSpec(objectAt(rt, "image"));
    boolean hasAudio = rt.has("audio") && rt.get("audio").isJsonObject();
    audio = hasAudio ? audioSpec(objectAt(rt, "audio")) : null;
    audioTokenId = hasAudio ? intAt(rt, "audio_token_id") : -1;
    audioTokens = hasAudio ? intAt(rt, "audio_tokens") : 0;
    JsonObject ct = objectAt(m, "chat_template");
    chatTemplate =
        new ChatTemplate(
            stringAt(ct, "prefix"),
            stringAt(ct, "turn"),
            stringAt(ct, "generation_prompt"),
            stringAt(ct, "image_placeholder"),
            stringAt(ct, "audio_placeholder"),
            stringAt(ct, "thinking_off_suffix"));
    Map<String, Integer> special = new LinkedHashMap<>();
    for (Map.Entry<String, JsonElement> e : objectAt(m, "special_tokens").entrySet()) {
      special.put(e.getKey(), e.getValue().getAsInt());
    }
    specialTokens = Collections.unmodifiableMap(special);
    Map<String, Method> ms = new LinkedHashMap<>();
    if (m.has("methods")) {
      for (Map.Entry<String, JsonElement> e : objectAt(m, "methods").entrySet()) {
        JsonObject spec = e.getValue().getAsJsonObject();
        ms.put(e.getKey(), new Method(e.getKey(), names(spec, "inputs"), names(spec, "outputs")));
      }
    }
    methods = Collections.unmodifiableMap(ms);
    Map<String, Long> fs = new LinkedHashMap<>();
    for (Map.Entry<String, JsonElement> e : objectAt(m, "files").entrySet()) {
      fs.put(e.getKey(), e.getValue().getAsJsonObject().get("bytes").getAsLong());
    }
    files = Collections.unmodifiableMap(fs);
    program = m.has("program") ? stringAt(m, "program") : "model.pte";
    // Longest chunk one token_embedding / text_decoder call takes (the exported dynamic bound).
    maxSeqLen = m.has("max_seq_len") ? intAt(m, "max_seq_len") : maxContext;
  }

  /** Reads bundleDir/manifest.json; any problem is one EngineException line naming the file. */
  public static BundleManifest read(File bundleDir) {
    File f = new File(bundleDir, MANIFEST);
    if (!f.isFile()) {
      throw new EngineException(f + ": missing; not an autoglm-export bundle (adb push the folder?)");
    }
    try {
      String text = new String(Files.readAllBytes(f.toPath()), StandardCharsets.UTF_8);
      return parse(bundleDir, text);
    } catch (IOException e) {
      throw new EngineException(f + ": cannot read: " + e.getMessage(), e);
    }
  }

  public static BundleManifest parse(File bundleDir, String json) {
    JsonElement el;
    try {
      el = JsonParser.parseString(json);
    } catch (JsonParseException e) {
      throw new EngineException(new File(bundleDir, MANIFEST) + ": invalid JSON: " + e.getMessage());
    }
    if (!el.isJsonObject()) {
      throw new EngineException(new File(bundleDir, MANIFEST) + ": expected a JSON object");
    }
    try {
      return new BundleManifest(bundleDir, el.getAsJsonObject());
    } catch (IllegalStateException | UnsupportedOperationException | NumberFormatException e) {
      throw new EngineException(new File(bundleDir, MANIFEST) + ": malformed: " + e.getMessage());
    }
  }

  /**
   * Every listed file exists with the exported size (a cheap check; hashing a multi-GB model on a
   * phone takes long, so sha256 is left to `autoglm-export validate` on the host).
   */
  public void checkFiles() {
    for (Map.Entry<String, Long> e : files.entrySet()) {
      File f = new File(root, e.getKey());
      if (!f.isFile()) {
        throw new EngineException(f + ": missing (listed in manifest.json); push the whole bundle folder");
      }
      if (f.length() != e.getValue()) {
        throw new EngineException(f + ": " + f.length() + " bytes but manifest.json says " + e.getValue()
            + (f.length() < e.getValue() ? " (truncated copy?)" : ""));
      }
    }
  }

  public File file(String name) {
    return new File(root, name);
  }

  public boolean hasAudio() {
    return audio != null;
  }

  public Method method(String name) {
    Method m = methods.get(name);
    if (m == null) {
      throw new EngineException(
          where() + ": the bundle has no method '" + name + "' (it has " + methods.keySet() + ")");
    }
    return m;
  }

  public int specialToken(String token) {
    Integer id = specialTokens.get(token);
    if (id == null) {
      throw new EngineException(where() + ": special_tokens has no " + token);
    }
    return id;
  }

  private String where() {
    return new File(root, MANIFEST).getPath();
  }

  private static ImageSpec imageSpec(JsonObject o) {
    return new ImageSpec(
        intAt(o, "height"),
        intAt(o, "width"),
        intAt(o, "patch_size"),
        intAt(o, "temporal_patch_size"),
        intAt(o, "merge_size"),
        floatsAt(o, "image_mean"),
        floatsAt(o, "image_std"),
        o.get("rescale_factor").getAsDouble());
  }

  private static AudioSpec audioSpec(JsonObject o) {
    return new AudioSpec(
        intAt(o, "sampling_rate"),
        intAt(o, "num_mel_bins"),
        intAt(o, "n_fft"),
        intAt(o, "hop_length"),
        intAt(o, "num_frames"));
  }

  private static List<String> names(JsonObject spec, String key) {
    List<String> out = new ArrayList<>();
    if (spec.has(key)) {
      for (JsonElement e : spec.getAsJsonArray(key)) {
        out.add(e.getAsJsonObject().get("name").getAsString());
      }
    }
    return out;
  }

  private static JsonElement need(JsonObject o, String key) {
    JsonElement e = o.get(key);
    if (e == null || e.isJsonNull()) {
      throw new IllegalStateException("missing key '" + key + "'");
    }
    return e;
  }

  private static JsonObject objectAt(JsonObject o, String key) {
    return need(o, key).getAsJsonObject();
  }

  private static String stringAt(JsonObject o, String key) {
    return need(o, key).getAsString();
  }

  private static int intAt(JsonObject o, String key) {
    return need(o, key).getAsInt();
  }

  private static long[] longsAt(JsonObject o, String key) {
    JsonArray a = need(o, key).getAsJsonArray();
    long[] out = new long[a.size()];
    for (int i = 0; i < out.length; i++) {
      out[i] = a.get(i).getAsLong();
    }
    return out;
  }

  private static float[] floatsAt(JsonObject o, String key) {
    JsonArray a = need(o, key).getAsJsonArray();
    float[] out = new float[a.size()];
    for (int i = 0; i < out.length; i++) {
      // Python casts the JSON doubles to float32 (np.asarray(mean, np.float32)); so do we.
      out[i] = (float) a.get(i).getAsDouble();
    }
    return out;
  }
}
