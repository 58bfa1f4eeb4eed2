package org.autoglm.engine;

import java.util.Arrays;
import java.util.Collections;
import java.util.List;

/**
 * Every name the app uses to talk to model.pte, in one place: `make demo-test` checks each one
 * against the manifest.json of a freshly exported bundle (METHOD_ against its methods, INPUT_ and
 * OUTPUT_ against their inputs and outputs), and ExecuTorchProgramEngine checks the input order
 * of the bundle it loads.
 */
public final class ModelNames {
  public static final String METHOD_VISION_ENCODER = "vision_encoder";
  public static final String METHOD_AUDIO_ENCODER = "audio_encoder";
  public static final String METHOD_TOKEN_EMBEDDING = "token_embedding";
  public static final String METHOD_TEXT_DECODER = "text_decoder";
  public static final String METHOD_TEXT_DECODER_STEP = "text_decoder_step";
  public static final String METHOD_RESET_CACHE = "reset_cache";

  /**
   * The methods the engine calls. A bundle with image buckets has a vision method per bucket
   * (vision_encoder_HxW); the engine runs the default one only, and each loaded method holds its own
   * XNNPACK-packed copy of the vision weights (0.4-0.9 GB at 9B), so the others are never loaded.
   */
  public static final List<String> METHODS_CALLED =
      Collections.unmodifiableList(
          Arrays.asList(
              METHOD_VISION_ENCODER,
              METHOD_AUDIO_ENCODER,
              METHOD_TOKEN_EMBEDDING,
              METHOD_TEXT_DECODER,
              METHOD_TEXT_DECODER_STEP,
              METHOD_RESET_CACHE));

  public static final String INPUT_PIXEL_VALUES = "pixel_values";
  public static final String INPUT_INPUT_FEATURES = "input_features";
  public static final String INPUT_TOKEN_IDS = "token_ids";
  public static final String INPUT_INPUTS_EMBEDS = "inputs_embeds";
  public static final String INPUT_CACHE_POSITION = "cache_position";
  public static final String INPUT_POSITION_IDS = "position_ids";

  public static final String OUTPUT_IMAGE_EMBEDS = "image_embeds";
  public static final String OUTPUT_AUDIO_EMBEDS = "audio_embeds";
  public static final String OUTPUT_EMBEDS = "embeds";
  public static final String OUTPUT_LOGITS = "logits";

  private ModelNames() {}
}
