# The PyPI torch wheel's CMake config is CUDA-enabled: find_package(Torch) needs a CUDA toolkit even for
# a CPU-only build. Point it at the machine's toolkit (nvcc on PATH, or /usr/local/cuda).
if(NOT CMAKE_CUDA_COMPILER)
  find_program(QVL_NVCC nvcc HINTS ENV CUDA_HOME ENV CUDA_PATH /usr/local/cuda PATH_SUFFIXES bin)
  if(QVL_NVCC)
    set(CMAKE_CUDA_COMPILER "${QVL_NVCC}" CACHE FILEPATH "nvcc")
  endif()
endif()
if(CMAKE_CUDA_COMPILER AND NOT CUDAToolkit_ROOT)
  get_filename_component(_cuda_bin "${CMAKE_CUDA_COMPILER}" DIRECTORY)
  get_filename_component(CUDAToolkit_ROOT "${_cuda_bin}" DIRECTORY)
  set(CUDA_TOOLKIT_ROOT_DIR "${CUDAToolkit_ROOT}")
endif()
if(NOT CMAKE_CUDA_COMPILER)
  message(FATAL_ERROR "qvl: no nvcc found. The torch wheel's CMake config needs the CUDA toolkit; "
                      "put nvcc on PATH or set CUDA_HOME.")
endif()
# No GPU here: name an architecture so torch's arch detection does not probe a device.
if(NOT TORCH_CUDA_ARCH_LIST)
  set(TORCH_CUDA_ARCH_LIST "9.0")
endif()
