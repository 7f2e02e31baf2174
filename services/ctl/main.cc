// tokenmeterctl: operator CLI of a tokenmeter cluster (commands and exit codes: ctl.h).
#include <iostream>

#include "services/ctl/ctl.h"

int main(int argc, char** argv) {
  return tokenmeter::ctl::RunCtl(argc, argv, std::cout, std::cerr);
}
