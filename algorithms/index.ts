// Pure quantization algorithms on typed arrays: nothing here knows about models, files or the CLI.

export {
  type QuantizedLayer, type QuantOptions, SUPPORTED_BITS, F16_MIN_SUBNORMAL, maxQ, numGroups, validateQuantOptions,
  roundHalfEven, roundToF16, roundToF16InPlace, paramsFromRanges, computeParams, quantizeValue, dequantizeValue,
  dequantize,
} from "./quantizer.js";
export { type RtnResult, quantizeRtn } from "./rtn.js";
export { type GptqOptions, type GptqResult, GptqHessian, gptqQuantize, reconstructionError } from "./gptq.js";
