package org.autoglm.engine;

/** The manifest's runtime.image: how a picture becomes vision-tower input (preprocess/image.py). */
public final class ImageSpec {
  public final int height;
  public final int width;
  public final int patchSize;
  public final int temporalPatchSize;
  public final int mergeSize;
  public final float[] mean;
  public final float[] std;
  public final double rescaleFactor;

  public ImageSpec(
      int height,
      int width,
      int patchSize,
      int temporalPatchSize,
      int mergeSize,
      float[] mean,
      float[] std,
      double rescaleFactor) {
    int unit = patchSize * mergeSize;
    if (height <= 0 || width <= 0 || height % unit != 0 || width % unit != 0) {
      throw new EngineException(
          "image size " + height + "x" + width + " must be positive multiples of " + unit);
    }
    if (mean.length != 3 || std.length != 3) {
      throw new EngineException("image_mean and image_std need 3 values (RGB)");
    }
    this.height = height;
    this.width = width;
    this.patchSize = patchSize;
    this.temporalPatchSize = temporalPatchSize;
    this.mergeSize = mergeSize;
    this.mean = mean.clone();
    this.std = std.clone();
    this.rescaleFactor = rescaleFactor;
  }

  /** (t, h, w) in patches, the image_grid_thw row of one still image. */
  public int[] gridThw() {
    return new int[] {1, height / patchSize, width / patchSize};
  }

  public int numPatches() {
    return (height / patchSize) * (width / patchSize);
  }

  /** Placeholder tokens per image in the prompt (after the merge_size x merge_size merger). */
  public int numTokens() {
    return numPatches() / (mergeSize * mergeSize);
  }

  public int patchDim() {
    return 3 * temporalPatchSize * patchSize * patchSize;
  }
}
